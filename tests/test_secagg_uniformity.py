"""A masked upload looks uniform; the same test flags an unmasked encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.secagg import SecAggClient, SecAggParams, SecAggServer, encode_update

M = 1 << 20  # ~1M elements: 4096 expected per bin
BINS = 256
Z_999 = 3.090232306167813  # standard normal 99.9% quantile


def wilson_hilferty_critical(df: int, z: float = Z_999) -> float:
    """Chi-square quantile via the Wilson-Hilferty cube approximation."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def critical_value(df: int) -> float:
    try:
        from scipy.stats import chi2
    except ImportError:
        return wilson_hilferty_critical(df)
    return float(chi2.ppf(0.999, df))


def top_byte_chi_square(values: np.ndarray) -> float:
    counts = np.bincount((values >> 24).astype(np.int64), minlength=BINS)
    expected = values.size / BINS
    return float(((counts - expected) ** 2 / expected).sum())


def test_wilson_hilferty_matches_scipy() -> None:
    chi2 = pytest.importorskip("scipy.stats").chi2
    for df in (100, 255, 1000):  # accurate for large df
        assert wilson_hilferty_critical(df) == pytest.approx(chi2.ppf(0.999, df), rel=5e-3)


def _masked_upload_of_zeros(params: SecAggParams, ids: list[int]) -> np.ndarray:
    server = SecAggServer(params)
    clients = {i: SecAggClient(i, params) for i in ids}
    requests = server.stage0_requests(ids)
    requests = server.stage1_requests({i: clients[i].stage0(r) for i, r in requests.items()})
    requests = server.stage2_requests({i: clients[i].stage1(r) for i, r in requests.items()})
    node = ids[0]
    return clients[node].stage2(requests[node], np.zeros(M, np.float32), 7)["masked"]


def test_masked_upload_is_uniform() -> None:
    params = SecAggParams(num_neighbours=2, threshold=2, clip=1.0, bits=20, max_weight=10)
    masked = _masked_upload_of_zeros(params, [11, 22, 33])
    stat = top_byte_chi_square(masked)
    # False alarm probability 0.1% per run by construction of the test.
    assert stat < critical_value(BINS - 1), stat


def test_unmasked_encoding_is_detected_as_non_uniform() -> None:
    params = SecAggParams(num_neighbours=2, threshold=2, clip=1.0, bits=20, max_weight=10)
    encoded = encode_update(np.zeros(M, np.float32), 7, params)
    assert top_byte_chi_square(encoded) > critical_value(BINS - 1)
    # Even a full-range encoding (bits=31, random data) is caught: it never
    # reaches the top bit.
    wide = SecAggParams(num_neighbours=2, threshold=2, clip=1.0, bits=31, max_weight=1)
    noise = np.random.default_rng(0).uniform(-1, 1, M).astype(np.float32)
    assert top_byte_chi_square(encode_update(noise, 1, wide)) > critical_value(BINS - 1)
