"""Fixed-point encoding: exact weights, bounded and unbiased quantization error."""

from __future__ import annotations

import numpy as np
import pytest

from common.secagg.encoding import (
    decode_sum,
    encode_update,
    quantization_error_bound,
    reference_weighted_mean,
)
from common.secagg.params import SecAggParams


def _sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v  # uint32 wraparound
    return total


@pytest.mark.parametrize("bits", [4, 12, 22, 31])
def test_decoded_mean_within_computed_bound(bits: int) -> None:
    rng = np.random.default_rng(bits)
    params = SecAggParams(bits=bits, clip=2.0, max_weight=500)
    n, m = 2 if bits == 31 else 7, 5000
    updates = [rng.uniform(-3, 3, m).astype(np.float32) for _ in range(n)]  # some get clipped
    weights = [int(w) for w in rng.integers(0, 800, n)]  # some exceed max_weight
    weights[0] = max(weights[0], 1)
    encoded = [encode_update(x, w, params) for x, w in zip(updates, weights)]
    for e in encoded:
        assert e.dtype == np.uint32 and e.shape == (m + 1,)
        assert e[:m].max() <= params.levels
    mean, total_weight = decode_sum(_sum(encoded), n, params)
    assert total_weight == sum(min(w, 500) for w in weights)
    expected = reference_weighted_mean(updates, weights, params)
    bound = quantization_error_bound(params, n, total_weight)
    assert mean.dtype == np.float32
    assert np.abs(mean - expected).max() <= bound


def test_bound_formula_matches_derivation_and_is_tight() -> None:
    params = SecAggParams(bits=8, clip=1.0, max_weight=10)
    bound = quantization_error_bound(params, 4, total_weight=20)
    quantum_of_mean = 4 * (2.0 / 255) * (10 / 20)
    assert quantum_of_mean < bound < quantum_of_mean * 1.0001
    # Default: worst case total weight = number of clients.
    assert quantization_error_bound(params, 4) == quantization_error_bound(params, 4, 4)


def test_stochastic_rounding_is_unbiased() -> None:
    params = SecAggParams(bits=3, clip=1.0, max_weight=1)
    x = np.full(200_000, 0.123, dtype=np.float32)
    mean, _ = decode_sum(encode_update(x, 1, params), 1, params)
    # One quantum is 2/7; the average of 200k independent roundings is far closer.
    assert abs(float(mean.astype(np.float64).mean()) - 0.123) < 0.005
    assert np.abs(mean - 0.123).max() <= quantization_error_bound(params, 1)


def test_extremes_do_not_overflow() -> None:
    params = SecAggParams(bits=31, clip=1.0, max_weight=3)
    x = np.array([1.0, -1.0, 5.0, -5.0, 0.0], dtype=np.float32)
    e = encode_update(x, 3, params)
    assert list(e[:4]) == [params.levels, 0, params.levels, 0]
    assert e[-1] == 3


def test_zero_weight_client_contributes_nothing() -> None:
    params = SecAggParams(bits=20, clip=1.0, max_weight=10)
    a = encode_update(np.full(10, 0.5, np.float32), 10, params)
    b = encode_update(np.full(10, -0.9, np.float32), 0, params)
    mean, total = decode_sum(a + b, 2, params)
    assert total == 10
    assert np.abs(mean - 0.5).max() <= quantization_error_bound(params, 2, 10)


def test_invalid_inputs_rejected() -> None:
    params = SecAggParams()
    with pytest.raises(ValueError, match="NaN"):
        encode_update(np.array([np.nan], np.float32), 1, params)
    with pytest.raises(ValueError, match="1-D float"):
        encode_update(np.zeros((2, 2), np.float32), 1, params)
    with pytest.raises(ValueError, match="weight"):
        encode_update(np.zeros(3, np.float32), -1, params)
    with pytest.raises(ValueError, match="total weight"):
        decode_sum(np.zeros(4, np.uint32), 1, params)


def test_reproducible_with_a_dither_key() -> None:
    params = SecAggParams()
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    key = b"k" * 32
    assert np.array_equal(encode_update(x, 5, params, dither_key=key), encode_update(x, 5, params, dither_key=key))
