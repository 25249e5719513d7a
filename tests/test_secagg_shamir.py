"""Shamir secret sharing over GF(2**521 - 1)."""

from __future__ import annotations

import itertools
import os

import pytest

from common.secagg.errors import SecAggError
from common.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    _interpolate_at_zero,
    combine_shares,
    share_from_bytes,
    share_to_bytes,
    split_secret,
)


@pytest.mark.parametrize("t,n", [(1, 1), (2, 3), (3, 5), (4, 7), (6, 9)])
def test_any_t_of_n_shares_reconstruct(t: int, n: int) -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, t, list(range(1, n + 1)))
    for subset in itertools.combinations(shares, t):
        assert combine_shares(subset, t) == secret


def test_more_than_t_shares_also_reconstruct_in_any_order() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 3, [2, 5, 9, 11, 40])
    assert combine_shares(list(reversed(shares)), 3) == secret


def test_t_minus_1_shares_do_not_reveal_the_secret() -> None:
    # With t-1 shares every candidate secret is consistent: the polynomial
    # through the shares and (0, s') exists for any s'. Interpolating t-1
    # shares (a degree t-2 guess) gives an unrelated value.
    secret = os.urandom(32)
    shares = split_secret(secret, 4, [1, 2, 3, 4, 5])
    guess = _interpolate_at_zero(shares[:3])
    assert guess != int.from_bytes(secret, "big")
    for candidate in (b"\x00" * 32, os.urandom(32)):
        # Lagrange through (0, candidate) + the t-1 known shares is a valid
        # degree t-1 polynomial that reproduces exactly these shares.
        points = [(0, int.from_bytes(candidate, "big"))] + shares[:3]
        for x, y in shares[:3]:
            assert _lagrange_eval(points, x) == y


def _lagrange_eval(points: list[tuple[int, int]], at: int) -> int:
    total = 0
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * (at - xm) % PRIME
                den = den * (xj - xm) % PRIME
        total = (total + yj * num * pow(den, -1, PRIME)) % PRIME
    return total


def test_too_few_shares_raise() -> None:
    shares = split_secret(os.urandom(32), 3, [1, 2, 3])
    with pytest.raises(SecAggError, match="need 3 shares"):
        combine_shares(shares[:2], 3)


def test_duplicate_x_raises() -> None:
    shares = split_secret(os.urandom(32), 2, [1, 2, 3])
    with pytest.raises(SecAggError, match="duplicate"):
        combine_shares([shares[0], shares[0]], 2)


def test_split_argument_checks() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        split_secret(b"short", 2, [1, 2])
    with pytest.raises(ValueError, match="threshold"):
        split_secret(os.urandom(32), 3, [1, 2])
    with pytest.raises(ValueError, match="x-coordinate"):
        split_secret(os.urandom(32), 2, [0, 1])


def test_tampered_share_is_detected_or_changes_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 2, [1, 2])
    bad = [(shares[0][0], (shares[0][1] + 1) % PRIME), shares[1]]
    try:
        assert combine_shares(bad, 2) != secret
    except SecAggError:
        pass  # out-of-range result: detected as inconsistent


def test_share_serialisation_round_trip() -> None:
    for share in split_secret(os.urandom(32), 3, [1, 7, 4000]):
        blob = share_to_bytes(share)
        assert len(blob) == SHARE_BYTES
        assert share_from_bytes(blob) == share
    with pytest.raises(SecAggError):
        share_from_bytes(b"\x00" * (SHARE_BYTES - 1))
    with pytest.raises(SecAggError):
        share_from_bytes(b"\x00" * SHARE_BYTES)  # x = 0
