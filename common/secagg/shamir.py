"""Shamir t-of-n secret sharing of 32-byte secrets over GF(2**521 - 1).

A secret s (read as a big-endian integer, s < 2**256 < p) is the constant term
of a random polynomial f of degree t - 1; the share for x-coordinate x is
(x, f(x)). Any t shares determine f(0) = s by Lagrange interpolation, and any
t - 1 shares are consistent with every possible secret (perfect secrecy).

In SecAgg+ the x-coordinate of the share a node holds is its 1-based position
in the sorted list of participating node ids, which everybody can compute.
"""

from __future__ import annotations

import secrets
from typing import Iterable, Sequence

from .errors import SecAggError

#: The Mersenne prime 2**521 - 1: larger than any 32-byte secret.
PRIME = (1 << 521) - 1
SECRET_BYTES = 32
_X_BYTES = 4
_Y_BYTES = (PRIME.bit_length() + 7) // 8  # 66
SHARE_BYTES = _X_BYTES + _Y_BYTES

Share = tuple[int, int]


def split_secret(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Split ``secret`` into one share per x-coordinate in ``xs``.

    Raises
    ------
    ValueError
        If the secret is not 32 bytes, ``threshold`` is not in [1, len(xs)],
        or the x-coordinates are not distinct values in [1, 2**32).
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    _check_xs(xs)
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [(x, _evaluate(coefficients, x)) for x in xs]


def combine_shares(shares: Iterable[Share], threshold: int) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares.

    Only the first ``threshold`` shares are used.

    Raises
    ------
    SecAggError
        Fewer than ``threshold`` shares, duplicate x-coordinates, or shares
        that interpolate to a value that cannot be a 32-byte secret (i.e. the
        shares are inconsistent or were tampered with).
    """
    points = list(shares)
    if threshold < 1 or len(points) < threshold:
        raise SecAggError(f"need {threshold} shares to reconstruct, got {len(points)}")
    points = points[:threshold]
    _check_xs([x for x, _ in points])
    value = _interpolate_at_zero(points)
    if value >> (8 * SECRET_BYTES):
        raise SecAggError("shares are inconsistent: reconstructed value is not a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(share: Share) -> bytes:
    """Fixed-width encoding: 4-byte x then 66-byte y, both big-endian."""
    x, y = share
    return x.to_bytes(_X_BYTES, "big") + y.to_bytes(_Y_BYTES, "big")


def share_from_bytes(data: bytes) -> Share:
    """Inverse of :func:`share_to_bytes`; rejects malformed input."""
    if not isinstance(data, bytes) or len(data) != SHARE_BYTES:
        raise SecAggError(f"a share must be {SHARE_BYTES} bytes")
    x = int.from_bytes(data[:_X_BYTES], "big")
    y = int.from_bytes(data[_X_BYTES:], "big")
    if x == 0 or y >= PRIME:
        raise SecAggError("malformed share (x = 0 or y outside the field)")
    return x, y


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise SecAggError("duplicate share x-coordinates")
    for x in xs:
        # x = 0 would be the secret itself.
        if not 1 <= x < (1 << (8 * _X_BYTES)):
            raise ValueError(f"share x-coordinate must be in [1, 2**32), got {x}")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for c in reversed(coefficients):  # Horner
        result = (result * x + c) % PRIME
    return result


def _interpolate_at_zero(points: Sequence[Share]) -> int:
    # f(0) = sum_j y_j * prod_{m != j} x_m / (x_m - x_j); one modular inverse.
    numerator_sum, denominator = 0, 1
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        # Accumulate sum(y_j num_j / den_j) as one fraction.
        numerator_sum = (numerator_sum * den + yj * num * denominator) % PRIME
        denominator = denominator * den % PRIME
    return numerator_sum * pow(denominator, -1, PRIME) % PRIME
