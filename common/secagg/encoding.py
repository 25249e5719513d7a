r"""Fixed-point encoding of weighted updates for summation modulo 2**32.

Notation: C = ``clip``, L = 2**``bits`` - 1, W = ``max_weight``; client i has
update x_i (float vector of length m) and weight n_i (number of examples).

Client (:func:`encode_update`)
    w_i  = min(n_i, W)                      integer weight, 0 <= w_i <= W
    a_i  = w_i / W                          weighting factor in [0, 1]
    x~_i = clip(x_i, -C, C)                 element-wise
    z_i  = (a_i x~_i + C) * L / (2C)        real, in [0, L] because |a_i x~_i| <= C
    q_i  = floor(z_i + u_i), u_i ~ U[0, 1)  stochastic rounding: E[q_i] = z_i,
                                            q_i in [0, L], |q_i - z_i| < 1
    encoding = [q_i (m values), w_i]        uint32 vector of length m + 1

Client-level DP (``common.privacy.distributed``) adds integer noise N_i to
q_i before masking: the encoding then holds q_i + N_i mod 2**32.

Server (:func:`decode_sum`) receives S = sum over the n survivors (mod 2**32;
:meth:`SecAggParams.validate` guarantees n L < 2**32 and n W < 2**32, and the
DP noise check keeps |S_q - n L / 2| < 2**31, so S_q is recovered exactly by
reading S - floor(n L / 2) as a signed 32-bit number):
    S_q = sum_i q_i,   S_w = sum_i w_i      (total weight, exact)
    sum_i z_i = (L / 2C) sum_i a_i x~_i + n L / 2
    =>  sum_i a_i x~_i ~= S_q 2C / L - n C
    mean = sum_i w_i x~_i / S_w = (W / S_w) sum_i a_i x~_i
         ~= (W / S_w) (S_q 2C / L - n C)

So the strategy gets the exact weighted mean of the clipped updates, with
weights capped at W, up to quantization. Because each |q_i - z_i| < 1, the
error of every element of the mean is below n (2C / L) (W / S_w), plus tiny
floating-point terms; :func:`quantization_error_bound` computes it. The
rounding is unbiased, so the typical error is ~sqrt(n) rather than n quanta.

Why scale by a_i before quantizing instead of sending w_i x_i: the product
needs the same C-sized range for every client (no per-client range to agree
on) and the integer weight travels exactly, so the server divides by the true
total weight. Choose W close to the largest real client weight: a W far above
the typical weight wastes levels (the error grows with W / S_w).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .params import SecAggParams
from .primitives import MaskStream, random_bytes

#: Elements processed per step; the float64 temporaries then stay in L2 cache.
CHUNK = 32768
_TWO_POW_MINUS_32 = 2.0**-32
# Relative rounding of float64 (2**-53) accumulated over the few operations
# that compute z_i (about 8 of them): an upper bound, in units of L.
_FP64_SLACK = 2.0**-50


def clipped_weight(weight: int, params: SecAggParams) -> int:
    """min(weight, max_weight) after checking it is a non-negative integer."""
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or weight < 0:
        raise ValueError(f"weight must be a non-negative int, got {weight!r}")
    return min(int(weight), params.max_weight)


def _as_update(update: np.ndarray) -> np.ndarray:
    x = np.asarray(update)
    if x.ndim != 1 or x.dtype.kind != "f":
        raise ValueError(f"update must be a 1-D float array, got shape {x.shape} dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("update contains NaN or infinite values")
    return x


def encode_update(
    update: np.ndarray,
    weight: int,
    params: SecAggParams,
    *,
    dither_key: bytes | None = None,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """Quantize a weighted update into a uint32 vector of length m + 1.

    Parameters
    ----------
    update : np.ndarray
        1-D float vector x_i (float32 in fedtext), finite.
    weight : int
        n_i, the number of examples; capped at ``params.max_weight``.
    params : SecAggParams
    dither_key : bytes, optional
        32-byte key of the AES-CTR stream that provides the rounding noise;
        random by default (pass one only to make tests reproducible).
    noise : np.ndarray, optional
        int64 vector of length m added to the quantized values (mod 2**32):
        the client's share of client-level DP noise.

    Returns
    -------
    np.ndarray
        uint32 vector: m quantized values in [0, L] then the capped weight.
    """
    x = _as_update(update)
    w = clipped_weight(weight, params)
    m, levels = x.size, params.levels
    a = w / params.max_weight
    scale = a * levels / (2.0 * params.clip)
    half_range = a * levels / 2.0
    offset = levels / 2.0

    encoded = np.empty(m + 1, dtype=np.uint32)
    encoded[m] = w
    dither = MaskStream(dither_key if dither_key is not None else random_bytes())
    size = min(CHUNK, max(m, 1))
    zeros = np.zeros(size, dtype=np.uint32)
    scratch = np.empty(4 * size + 15, dtype=np.uint8)
    z_buf = np.empty(size, dtype=np.float64)
    u_buf = np.empty(size, dtype=np.float64)
    for start in range(0, m, size):
        count = min(size, m - start)
        z, u = z_buf[:count], u_buf[:count]
        # clip(a x, -aC, aC) == a clip(x, -C, C) for a >= 0; done in float64
        # so that up to 31 bits of levels keep their fractional part.
        np.multiply(x[start : start + count], scale, out=z, dtype=np.float64)
        np.clip(z, -half_range, half_range, out=z)
        np.multiply(dither.read_into(zeros, scratch, count), _TWO_POW_MINUS_32, out=u, dtype=np.float64)
        z += u
        z += offset
        # z >= 0, so the truncating cast is floor().
        encoded[start : start + count] = z
    # floor(z + u) can round up to L + 1 only through float64 rounding at z = L.
    np.minimum(encoded[:m], levels, out=encoded[:m])
    if noise is not None:
        if noise.shape != (m,):
            raise ValueError(f"noise must have shape ({m},), got {noise.shape}")
        # uint32 arithmetic wraps: adding N mod 2**32 is adding N.
        encoded[:m] += (noise % (1 << 32)).astype(np.uint32)
    return encoded


def decode_sum(total: np.ndarray, num_summed: int, params: SecAggParams) -> tuple[np.ndarray, int]:
    """Weighted mean and total weight from the unmasked sum of encodings.

    Parameters
    ----------
    total : np.ndarray
        uint32 vector of length m + 1: the sum (mod 2**32) of ``num_summed``
        outputs of :func:`encode_update`.
    num_summed : int
        n, the number of encodings in the sum (needed to remove the offsets).

    Returns
    -------
    (np.ndarray, int)
        float32 mean update of length m, and S_w (sum of capped weights).

    Raises
    ------
    ValueError
        If the total weight is zero (no mean exists).
    """
    total = np.asarray(total)
    if total.ndim != 1 or total.dtype != np.uint32 or total.size < 1:
        raise ValueError("total must be a non-empty 1-D uint32 vector")
    total_weight = int(total[-1])
    if total_weight == 0:
        raise ValueError("total weight of the summed clients is 0: the mean is undefined")
    levels, clip = params.levels, params.clip
    offset = (num_summed * levels) // 2
    m = total.size - 1
    mean = np.empty(m, dtype=np.float32)
    size = min(CHUNK, max(m, 1))
    buf = np.empty(size, dtype=np.float64)
    for start in range(0, m, size):
        count = min(size, m - start)
        part = buf[:count]
        # S_q, exactly: S - floor(n L / 2) read as a signed 32-bit number, plus
        # floor(n L / 2) back. Without noise that is S itself (the arithmetic
        # below is then the same as before DP existed); with noise it also
        # holds where the noise took S_q below 0 or past 2**32.
        centred = (total[start : start + count] - np.uint32(offset % (1 << 32))).view(np.int32)
        np.add(centred, float(offset), out=part, dtype=np.float64)
        # (W / S_w) * (S_q * 2C / L - n C), in float64, one cache-sized slice at a time.
        part *= 2.0 * clip / levels
        part -= num_summed * clip
        part *= params.max_weight / total_weight
        mean[start : start + count] = part
    return mean, total_weight


def quantization_error_bound(
    params: SecAggParams, num_clients: int, total_weight: int | None = None
) -> float:
    """Largest possible |decoded mean - exact weighted mean| of any element.

    The exact mean is sum_i w_i clip(x_i) / sum_i w_i with w_i = min(n_i, W).

    Parameters
    ----------
    num_clients : int
        n, the number of encodings summed.
    total_weight : int, optional
        S_w = sum of capped weights. Without it the worst case S_w = n (every
        client has weight >= 1) is assumed.

    Notes
    -----
    bound = E_q + E_64 + E_32 with
      E_q  = n (1 + 2**-50 L) (2C / L) (W / S_w)   rounding, |q_i - z_i| < 1 per
             client, plus float64 error in computing z_i (< 2**-50 L quanta);
      E_64 = 2**-48 n C W / S_w                    float64 error of the decoding;
      E_32 = 2**-24 (C + E_q + E_64)               final cast to float32.
    """
    n = int(num_clients)
    s_w = n if total_weight is None else int(total_weight)
    if n < 1 or s_w < 1:
        raise ValueError("num_clients and total_weight must be >= 1")
    levels, clip, w_max = params.levels, params.clip, params.max_weight
    e_q = n * (1.0 + _FP64_SLACK * levels) * (2.0 * clip / levels) * (w_max / s_w)
    e_64 = 2.0**-48 * n * clip * w_max / s_w
    e_32 = 2.0**-24 * (clip + e_q + e_64)
    return e_q + e_64 + e_32


def reference_weighted_mean(
    updates: Sequence[np.ndarray], weights: Sequence[int], params: SecAggParams
) -> np.ndarray:
    """Plaintext mean that the secure aggregate approximates (float64).

    sum_i min(n_i, W) clip(x_i, -C, C) / sum_i min(n_i, W).
    """
    capped = [clipped_weight(w, params) for w in weights]
    total = sum(capped)
    if total == 0 or math.isclose(total, 0):
        raise ValueError("total weight is 0")
    acc = np.zeros(np.asarray(updates[0]).size, dtype=np.float64)
    for x, w in zip(updates, capped):
        acc += w * np.clip(np.asarray(x, dtype=np.float64), -params.clip, params.clip)
    return acc / total
