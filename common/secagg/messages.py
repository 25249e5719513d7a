"""Every message of the SecAgg+ protocol, in one place.

All messages are flat ``dict[str, value]`` with values of type ``int``,
``float``, ``bytes``, ``str``, lists of one of these, or a 1-D numpy ``uint32``
array (only the masked vector), so the transport can map them onto Flower
ConfigRecords / ArrayRecords. Every message carries ``stage``; every request
also repeats ``round_id`` so that a client never mixes two rounds.

U0 = sampled nodes, U1 = answered stage 0, U2 = answered stage 1 (after
pruning nodes with fewer than t such neighbours), U3 = answered stage 2,
U4 = answered stage 3. N(i) = neighbours of i in the graph over U1.
Node ids are ints in [0, 2**64).

========  ==========================  ========================================  ==============================
stage     request (server -> client)  reply (client -> server)                  built / consumed in
========  ==========================  ========================================  ==============================
0 keys    round_id: bytes             pk_c: bytes (X25519, pairwise masks)      SecAggServer.stage0_requests /
          num_clients: int (|U0|)     pk_s: bytes (X25519, share encryption)    SecAggClient.stage0 ->
          params.<field>: int|float   signature: bytes (Ed25519 over round,     SecAggServer.stage1_requests
          (every SecAggParams field)  node id, pk_c, pk_s; b"" if unsigned)
1 shares  round_id                    peer_ids: list[int] (= N(i))              SecAggServer.stage1_requests /
          node_ids: list[int] (U1)    ciphertexts: list[bytes]: AES-GCM of      SecAggClient.stage1 ->
          peer_ids: list[int] (N(i))  (share of b_i || share of sk_c,i) for     SecAggServer.stage2_requests
          peer_pk_c: list[bytes]      that peer, AD = (i, peer, round)
          peer_pk_s: list[bytes]
          peer_signatures: list[bytes]
2 masked  round_id                    masked: uint32 array, length m + 1 =      SecAggServer.stage2_requests /
          peer_ids: list[int]         encode(x_i, n_i) + PRG(b_i)               SecAggClient.stage2 (masks,
          (N(i) & U2, the senders)    + sum_{j in peer_ids, i<j} PRG(s_ij)      encoding.encode_update) ->
          ciphertexts: list[bytes]    - sum_{j in peer_ids, i>j} PRG(s_ij)      SecAggServer.stage3_requests
          (addressed to i)            (mod 2**32)                               (sums the vectors)
3 unmask  round_id                    b_share_owners: list[int] (alive + self)  SecAggServer.stage3_requests /
          alive: list[int]            b_shares: list[bytes]                     SecAggClient.stage3 ->
          (N(i) & U3)                 sk_share_owners: list[int] (= dropped)    SecAggServer.finish (unmasks,
          dropped: list[int]          sk_shares: list[bytes]                    encoding.decode_sum)
          (N(i) & U2 - U3)            (shares: shamir.share_to_bytes format)
========  ==========================  ========================================  ==============================

``finish`` returns ``SecAggResult(mean_update: float32 array of length m,
total_weight: int, survivors: list[int] = sorted U3)``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from .errors import SecAggError

STAGE = "stage"
ROUND_ID = "round_id"
NUM_CLIENTS = "num_clients"
PARAMS_PREFIX = "params."
PK_C = "pk_c"
PK_S = "pk_s"
SIGNATURE = "signature"
NODE_IDS = "node_ids"
PEER_IDS = "peer_ids"
PEER_PK_C = "peer_pk_c"
PEER_PK_S = "peer_pk_s"
PEER_SIGNATURES = "peer_signatures"
CIPHERTEXTS = "ciphertexts"
MASKED = "masked"
ALIVE = "alive"
DROPPED = "dropped"
B_SHARE_OWNERS = "b_share_owners"
B_SHARES = "b_shares"
SK_SHARE_OWNERS = "sk_share_owners"
SK_SHARES = "sk_shares"

Message = dict[str, Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(e) for e in v)


def _is_bytes(v: Any) -> bool:
    return isinstance(v, bytes)


def _is_uint32_vector(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype == np.uint32


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    STAGE: _is_int,
    ROUND_ID: _is_bytes,
    NUM_CLIENTS: _is_int,
    PK_C: _is_bytes,
    PK_S: _is_bytes,
    SIGNATURE: _is_bytes,
    NODE_IDS: _list_of(_is_int),
    PEER_IDS: _list_of(_is_int),
    PEER_PK_C: _list_of(_is_bytes),
    PEER_PK_S: _list_of(_is_bytes),
    PEER_SIGNATURES: _list_of(_is_bytes),
    CIPHERTEXTS: _list_of(_is_bytes),
    MASKED: _is_uint32_vector,
    ALIVE: _list_of(_is_int),
    DROPPED: _list_of(_is_int),
    B_SHARE_OWNERS: _list_of(_is_int),
    B_SHARES: _list_of(_is_bytes),
    SK_SHARE_OWNERS: _list_of(_is_int),
    SK_SHARES: _list_of(_is_bytes),
}

REQUEST_FIELDS: dict[int, tuple[str, ...]] = {
    0: (STAGE, ROUND_ID, NUM_CLIENTS),
    1: (STAGE, ROUND_ID, NODE_IDS, PEER_IDS, PEER_PK_C, PEER_PK_S, PEER_SIGNATURES),
    2: (STAGE, ROUND_ID, PEER_IDS, CIPHERTEXTS),
    3: (STAGE, ROUND_ID, ALIVE, DROPPED),
}
REPLY_FIELDS: dict[int, tuple[str, ...]] = {
    0: (STAGE, PK_C, PK_S, SIGNATURE),
    1: (STAGE, PEER_IDS, CIPHERTEXTS),
    2: (STAGE, MASKED),
    3: (STAGE, B_SHARE_OWNERS, B_SHARES, SK_SHARE_OWNERS, SK_SHARES),
}
# Parallel lists that must have equal lengths.
_PARALLEL: tuple[tuple[str, ...], ...] = (
    (PEER_IDS, PEER_PK_C, PEER_PK_S, PEER_SIGNATURES),
    (PEER_IDS, CIPHERTEXTS),
    (B_SHARE_OWNERS, B_SHARES),
    (SK_SHARE_OWNERS, SK_SHARES),
)


def stage_of(message: Mapping[str, Any]) -> int:
    """The ``stage`` field of a message (to dispatch on)."""
    stage = message.get(STAGE) if isinstance(message, Mapping) else None
    if not _is_int(stage) or stage not in REQUEST_FIELDS:
        raise SecAggError(f"message has no valid 'stage' field: {stage!r}")
    return stage


def check_message(message: Mapping[str, Any], stage: int, *, is_request: bool) -> None:
    """Raise :class:`SecAggError` unless ``message`` is a well-formed stage message."""
    kind = "request" if is_request else "reply"
    if not isinstance(message, Mapping):
        raise SecAggError(f"stage {stage} {kind} must be a mapping, got {type(message).__name__}")
    if message.get(STAGE) != stage:
        raise SecAggError(f"expected a stage {stage} {kind}, got stage {message.get(STAGE)!r}")
    fields = (REQUEST_FIELDS if is_request else REPLY_FIELDS)[stage]
    for name in fields:
        if name not in message:
            raise SecAggError(f"stage {stage} {kind} lacks field {name!r}")
        if not _FIELD_CHECKS[name](message[name]):
            raise SecAggError(f"stage {stage} {kind} field {name!r} has the wrong type")
    for group in _PARALLEL:
        present = [message[n] for n in group if n in fields]
        if len(present) > 1 and len({len(v) for v in present}) != 1:
            raise SecAggError(f"stage {stage} {kind}: lists {', '.join(group)} differ in length")


def is_plain_data(message: Mapping[str, Any]) -> bool:
    """True if every value is a transport-friendly plain type (see module doc)."""
    scalar = (bytes, int, float, str)

    def plain(v: Any) -> bool:
        if isinstance(v, np.ndarray):
            return v.ndim == 1 and v.dtype in (np.uint32, np.float32)
        if isinstance(v, list):
            return all(isinstance(e, scalar) for e in v) and len({type(e) for e in v}) <= 1
        return isinstance(v, scalar)

    return all(isinstance(k, str) and plain(v) for k, v in message.items())
