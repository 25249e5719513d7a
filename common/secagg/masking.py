"""Adding and removing PRG masks on uint32 vectors (arithmetic mod 2**32).

Client i uploads  encode(x_i) + PRG(b_i) + sum_j sign_ij PRG(s_ij)  with
sign_ij = +1 if i < j else -1, so the pairwise masks of two surviving
neighbours cancel in the sum. The server removes PRG(b_u) of every survivor u
and, for a node d that dropped after sharing keys, the masks
sign_ud PRG(s_ud) that its surviving neighbours u added.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .primitives import MaskStream

#: uint32 words per step: the keystream scratch and the vector slice stay in L2.
CHUNK = 65536


def pairwise_sign(own_id: int, peer_id: int) -> int:
    """+1 if the lower id adds the pairwise mask (own_id < peer_id), else -1."""
    return 1 if own_id < peer_id else -1


def apply_masks(vector: np.ndarray, add_keys: Sequence[bytes], subtract_keys: Sequence[bytes]) -> None:
    """In place: vector += sum PRG(add_keys) - sum PRG(subtract_keys) (mod 2**32).

    All streams advance together chunk by chunk so that each slice of
    ``vector`` is read and written once per chunk while it is in cache.
    """
    if vector.dtype != np.uint32 or vector.ndim != 1:
        raise ValueError("vector must be a 1-D uint32 array")
    streams = [(MaskStream(k), np.add) for k in add_keys]
    streams += [(MaskStream(k), np.subtract) for k in subtract_keys]
    if not streams:
        return
    length = vector.size
    size = min(CHUNK, max(length, 1))
    zeros = np.zeros(size, dtype=np.uint32)
    scratch = np.empty(4 * size + 15, dtype=np.uint8)
    for start in range(0, length, size):
        count = min(size, length - start)
        part = vector[start : start + count]
        for stream, op in streams:
            # uint32 arithmetic wraps, which is exactly reduction mod 2**32.
            op(part, stream.read_into(zeros, scratch, count), out=part)
