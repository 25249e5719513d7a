"""In-process driver that runs a whole SecAgg+ round without any transport.

Used by the tests and handy for simulations: it plays the role of the
transport, loses the replies of nodes that "drop", and can push every client
through :meth:`SecAggClient.to_state` / :meth:`SecAggClient.from_state`
between stages the way a stateless deployment does.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping

import numpy as np

from .client import SecAggClient
from .errors import SecAggError
from .messages import Message, is_plain_data
from .params import SecAggParams
from .server import SecAggResult, SecAggServer

RequestHook = Callable[[int, int, Message], Message]


def run_local_round(
    params: SecAggParams,
    updates: Mapping[int, np.ndarray],
    weights: Mapping[int, int],
    *,
    drop: Mapping[int, int] | None = None,
    serialise_state: bool = True,
    round_id: bytes | None = None,
    identity_keys: Mapping[int, Any] | None = None,
    trusted_identities: Collection[bytes] | None = None,
    on_request: RequestHook | None = None,
    noise: Mapping[int, np.ndarray] | None = None,
) -> SecAggResult:
    """Run one round over the nodes in ``updates`` and return the server's result.

    Parameters
    ----------
    drop : mapping node id -> stage, optional
        The node's reply to that stage (0-3) is lost, and it takes no further part.
    serialise_state : bool
        Round-trip every client through ``to_state``/``from_state`` between
        stages, and check that all states and messages are plain data.
    identity_keys, trusted_identities : optional
        Ed25519 signing keys per node, and the set of public keys clients trust.
    on_request : callable (stage, node, request) -> request, optional
        Lets a test alter requests (a malicious server).
    noise : mapping node id -> int64 array, optional
        Integer noise each client adds before masking (client-level DP).
    """
    drop = dict(drop or {})
    server = SecAggServer(params, round_id=round_id)
    clients = {
        n: SecAggClient(
            n,
            params,
            identity_key=(identity_keys or {}).get(n),
            trusted_identities=trusted_identities,
        )
        for n in updates
    }
    states: dict[int, dict[str, Any]] = {}

    def answer(stage: int, requests: Mapping[int, Message]) -> dict[int, Message]:
        replies = {}
        for node, request in requests.items():
            if on_request is not None:
                request = on_request(stage, node, request)
            _require_plain(request)
            client = SecAggClient.from_state(states[node]) if serialise_state and stage > 0 else clients[node]
            if stage == 2:
                reply = client.stage2(request, updates[node], weights[node], noise=(noise or {}).get(node))
            else:
                reply = getattr(client, f"stage{stage}")(request)
            _require_plain(reply)
            if serialise_state:
                states[node] = client.to_state()
                _require_plain(states[node])
            if drop.get(node, 99) > stage:
                replies[node] = reply
        return replies

    replies0 = answer(0, server.stage0_requests(list(updates)))
    replies1 = answer(1, server.stage1_requests(replies0))
    replies2 = answer(2, server.stage2_requests(replies1))
    replies3 = answer(3, server.stage3_requests(replies2))
    return server.finish(replies3)


def _require_plain(message: Mapping[str, Any]) -> None:
    if not is_plain_data(message):
        raise SecAggError(f"message or state is not plain data: { {k: type(v).__name__ for k, v in message.items()} }")
