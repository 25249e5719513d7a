"""Server side of SecAgg+: routes the four stages and unmasks the sum.

The server is message-oriented: each ``stageN_requests`` call takes the
replies that arrived for the previous stage (a missing or malformed reply
means the node dropped) and returns the next requests keyed by node id::

    server = SecAggServer(params)
    requests = server.stage0_requests(sampled_node_ids)
    requests = server.stage1_requests(replies0)   # replies: {node_id: reply}
    requests = server.stage2_requests(replies1)
    requests = server.stage3_requests(replies2)
    mean, total_weight, survivors = server.finish(replies3)

Stage 2's replies are the only large ones (one update-sized vector per
client). A server that knows the vector length can take them one at a time
as they arrive, with :meth:`SecAggServer.add_masked`, and call
``stage3_requests()`` without replies: it then holds one vector, the running
sum, instead of one per client.

Dropouts in stages 0 and 1 are excluded cleanly (the graph is built over the
nodes that advertised keys; nodes whose shares never got delivered are not
masked with). Dropouts in stages 2 and 3 are recovered through the Shamir
shares. When recovery is impossible a :class:`SecAggError` starting with
"not enough survivors" says how many were needed and at which stage.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np

from . import messages as msg
from .encoding import decode_sum
from .errors import SecAggError
from .graph import graph_degree, neighbour_graph
from .masking import apply_masks, pairwise_sign
from .params import SecAggParams
from .primitives import (
    KEY_BYTES,
    PURPOSE_MASK,
    SIGNATURE_BYTES,
    agree,
    node_id_bytes,
    random_bytes,
    x25519_public_from_secret,
)
from .shamir import Share, combine_shares, share_from_bytes

ROUND_ID_BYTES = 16


class SecAggResult(NamedTuple):
    """Outcome of a round: unpacks as ``(mean_update, total_weight, survivors)``."""

    mean_update: np.ndarray
    total_weight: int
    survivors: list[int]


def _not_enough(got: int, threshold: int, stage: int, detail: str) -> SecAggError:
    return SecAggError(f"not enough survivors: got {got}, need t={threshold} at stage {stage} ({detail})")


class SecAggServer:
    """Drives one SecAgg+ round.

    Parameters
    ----------
    params : SecAggParams
    round_id : bytes, optional
        Public, unique per round (>= 16 bytes); random by default. It seeds
        the neighbour graph and is bound into every key and ciphertext.
    vector_length : int, optional
        Expected length m + 1 of masked vectors; by default the most common
        length among the stage-2 replies. Other lengths count as dropouts.

    Attributes
    ----------
    dropped : dict[int, int]
        Node id -> stage whose reply was missing or rejected.
    rejected : dict[int, str]
        Node id -> why its reply was rejected (malformed, pruned, ...).
    """

    def __init__(
        self, params: SecAggParams, *, round_id: bytes | None = None, vector_length: int | None = None
    ) -> None:
        self.params = params
        self.round_id = round_id if round_id is not None else random_bytes(ROUND_ID_BYTES)
        if len(self.round_id) < ROUND_ID_BYTES:
            raise ValueError(f"round_id must have at least {ROUND_ID_BYTES} bytes")
        self.vector_length = vector_length
        self.dropped: dict[int, int] = {}
        self.rejected: dict[int, str] = {}
        self._next_stage = 0
        self._sampled: list[int] = []
        self._pk_c: dict[int, bytes] = {}
        self._graph: dict[int, tuple[int, ...]] = {}
        self._x_index: dict[int, int] = {}
        self._threshold = 0
        self._u2: list[int] = []
        self._u3: list[int] = []
        self._ciphertexts: dict[tuple[int, int], bytes] = {}
        self._requests3: dict[int, dict[str, Any]] = {}
        self._masked_sum: np.ndarray | None = None
        self._summed: list[int] = []  # stage-2 nodes whose masked vector is in the running sum

    # ----------------------------------------------------------- accessors
    @property
    def threshold(self) -> int:
        """Shamir threshold t of this round (0 before stage 1 requests)."""
        return self._threshold

    def neighbours(self, node_id: int) -> tuple[int, ...]:
        """Neighbours of ``node_id`` in the graph over the stage-0 survivors."""
        return self._graph[node_id]

    # ------------------------------------------------------------ stage 0
    def stage0_requests(self, node_ids: Iterable[int]) -> dict[int, msg.Message]:
        """Key-advertisement requests for the sampled nodes."""
        self._enter(0)
        ids = list(node_ids)
        for n in ids:
            node_id_bytes(n)
        if len(set(ids)) != len(ids):
            raise ValueError("node ids must be distinct")
        self.params.validate(len(ids))
        self._sampled = sorted(ids)
        request: dict[str, Any] = {msg.STAGE: 0, msg.ROUND_ID: self.round_id, msg.NUM_CLIENTS: len(ids)}
        for name, value in self.params.to_dict().items():
            request[msg.PARAMS_PREFIX + name] = value
        return {n: dict(request) for n in self._sampled}

    # ------------------------------------------------------------ stage 1
    def stage1_requests(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, msg.Message]:
        """Forward every advertising node the keys of its neighbours."""
        self._enter(1)
        adverts = self._accept(replies, 0, self._sampled, self._check_advert)
        u1 = sorted(adverts)
        degree = graph_degree(len(u1), self.params.num_neighbours)
        self._threshold = t = self.params.threshold_for_degree(degree)
        if t > degree + 1:
            raise _not_enough(len(u1), t, 0, "clients that advertised keys")
        self._graph = neighbour_graph(u1, self.params.num_neighbours, self.round_id)
        self._x_index = {n: i + 1 for i, n in enumerate(u1)}
        self._pk_c = {n: adverts[n][msg.PK_C] for n in u1}
        requests = {}
        for node in u1:
            peers = self._graph[node]
            requests[node] = {
                msg.STAGE: 1,
                msg.ROUND_ID: self.round_id,
                msg.NODE_IDS: list(u1),
                msg.PEER_IDS: list(peers),
                msg.PEER_PK_C: [adverts[p][msg.PK_C] for p in peers],
                msg.PEER_PK_S: [adverts[p][msg.PK_S] for p in peers],
                msg.PEER_SIGNATURES: [adverts[p][msg.SIGNATURE] for p in peers],
            }
        return requests

    @staticmethod
    def _check_advert(node: int, reply: Mapping[str, Any]) -> None:
        if len(reply[msg.PK_C]) != KEY_BYTES or len(reply[msg.PK_S]) != KEY_BYTES:
            raise SecAggError("public keys must be 32 bytes")
        if len(reply[msg.SIGNATURE]) not in (0, SIGNATURE_BYTES):
            raise SecAggError("signature must be empty or 64 bytes")

    # ------------------------------------------------------------ stage 2
    def stage2_requests(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, msg.Message]:
        """Deliver to each node the share ciphertexts addressed to it."""
        self._enter(2)
        u1 = sorted(self._graph)
        shared = self._accept(replies, 1, u1, self._check_share_reply)
        u2 = self._prune(set(shared))
        if not u2:
            raise _not_enough(
                len(shared), self._threshold, 1,
                "no client kept t neighbours that shared keys",
            )
        self._u2 = sorted(u2)
        for sender in self._u2:
            reply = shared[sender]
            for receiver, ct in zip(reply[msg.PEER_IDS], reply[msg.CIPHERTEXTS]):
                if receiver in u2:
                    self._ciphertexts[(sender, receiver)] = ct
        requests = {}
        for node in self._u2:
            senders = [p for p in self._graph[node] if p in u2]
            requests[node] = {
                msg.STAGE: 2,
                msg.ROUND_ID: self.round_id,
                msg.PEER_IDS: senders,
                msg.CIPHERTEXTS: [self._ciphertexts[(p, node)] for p in senders],
            }
        return requests

    def _check_share_reply(self, node: int, reply: Mapping[str, Any]) -> None:
        peers = reply[msg.PEER_IDS]
        if len(set(peers)) != len(peers) or set(peers) != set(self._graph[node]):
            raise SecAggError("ciphertexts are not addressed to exactly the node's neighbours")

    def _prune(self, alive: set[int]) -> set[int]:
        # A node whose shares reached fewer than t holders (itself included)
        # could never be unmasked; removing it now is as clean as a stage-1
        # dropout.
        alive = set(alive)
        changed = True
        while changed:
            changed = False
            for node in sorted(alive):
                if 1 + sum(p in alive for p in self._graph[node]) < self._threshold:
                    alive.discard(node)
                    self.dropped[node] = 1
                    self.rejected[node] = "pruned: fewer than t neighbours shared keys"
                    changed = True
        return alive

    # ------------------------------------------------------------ stage 3
    def add_masked(self, node: int, reply: Mapping[str, Any]) -> None:
        """Add one stage-2 reply's masked vector to the running sum, as it arrives.

        Needs ``vector_length``. A reply from a node that was not asked, or a
        second one from the same node, is ignored; a malformed one counts as
        the node dropping at stage 2. Call :meth:`stage3_requests` once the
        replies are in.
        """
        if self._next_stage != 3:
            raise SecAggError(f"server is at stage {self._next_stage}, cannot take masked inputs")
        if self.vector_length is None:
            raise ValueError("add_masked needs the server's vector_length")
        if node not in self._u2 or node in self._summed or node in self.dropped:
            return
        try:
            self._check_masked_reply(node, reply)
            if reply[msg.MASKED].size != self.vector_length:
                raise SecAggError(f"masked vector length differs from {self.vector_length}")
        except SecAggError as exc:
            self._mark_dropped(node, 2, str(exc))
            return
        if self._masked_sum is None:
            self._masked_sum = np.zeros(self.vector_length, dtype=np.uint32)
        np.add(self._masked_sum, reply[msg.MASKED], out=self._masked_sum)  # wraps mod 2**32
        self._summed.append(node)

    def stage3_requests(self, replies: Mapping[int, Mapping[str, Any]] | None = None) -> dict[int, msg.Message]:
        """Sum the masked vectors and ask survivors for the shares needed to unmask.

        ``replies``: the stage-2 replies not already given to :meth:`add_masked`.
        """
        if replies:
            if self.vector_length is None:
                self.vector_length = self._agree_on_length(replies)
            for node in sorted(replies):
                self.add_masked(node, replies[node])
        self._enter(3)
        for node in self._u2:
            if node not in self._summed and node not in self.dropped:
                self._mark_dropped(node, 2, None)
        u3 = set(self._summed)
        t = self._threshold
        if len(u3) < t:
            raise _not_enough(len(u3), t, 2, "clients that sent masked inputs")
        self._check_recoverable(u3, set(self._u2) - u3, stage=2, responders=u3)
        self._u3 = sorted(u3)

        gone = set(self._u2) - u3
        self._requests3 = {}
        for node in self._u3:
            self._requests3[node] = {
                msg.STAGE: 3,
                msg.ROUND_ID: self.round_id,
                msg.ALIVE: [p for p in self._graph[node] if p in u3],
                msg.DROPPED: [p for p in self._graph[node] if p in gone],
            }
        return {n: dict(r) for n, r in self._requests3.items()}

    @staticmethod
    def _check_masked_reply(node: int, reply: Mapping[str, Any]) -> None:
        """A well-formed stage-2 reply with a non-empty masked vector (its length is checked by the caller)."""
        msg.check_message(reply, 2, is_request=False)
        if reply[msg.MASKED].size < 1:
            raise SecAggError("masked vector is empty")

    def _agree_on_length(self, replies: Mapping[int, Mapping[str, Any]]) -> int:
        """The most common length among the well-formed masked vectors (ties: the smaller)."""
        sizes = []
        for node in self._u2:
            reply = replies.get(node)
            if reply is None:
                continue
            try:
                self._check_masked_reply(node, reply)
            except SecAggError:
                continue  # add_masked rejects it, with the reason
            sizes.append(reply[msg.MASKED].size)
        counts = Counter(sizes)
        return min(counts, key=lambda size: (-counts[size], size)) if counts else 0

    def _check_recoverable(self, survivors: set[int], gone: set[int], *, stage: int, responders: set[int]) -> None:
        """Every mask still in the sum must be removable from >= t responders' shares.

        A survivor's self-mask shares are held by its neighbours and by itself;
        a dropped node's key shares only by its neighbours.
        """
        t = self._threshold
        for node in sorted(survivors):
            have = sum(p in responders for p in (*self._graph[node], node))
            if have < t:
                raise _not_enough(have, t, stage, f"holders of node {node}'s self-mask shares (itself included)")
        for node in sorted(gone):
            if not any(p in survivors for p in self._graph[node]):
                continue  # no survivor masked with it: nothing to remove
            have = sum(p in responders for p in self._graph[node])
            if have < t:
                raise _not_enough(have, t, stage, f"neighbours of dropped node {node} able to return its key shares")

    # -------------------------------------------------------------- finish
    def finish(self, replies: Mapping[int, Mapping[str, Any]]) -> SecAggResult:
        """Reconstruct the secrets, remove the masks and decode the mean."""
        self._enter(4)
        shares = self._accept(replies, 3, self._u3, self._check_unmask_reply)
        u3, gone = set(self._u3), set(self._u2) - set(self._u3)
        self._check_recoverable(u3, gone, stage=3, responders=set(shares))

        add_keys: list[bytes] = []
        subtract_keys: list[bytes] = []
        for node in self._u3:
            subtract_keys.append(self._reconstruct(node, shares, msg.B_SHARE_OWNERS, msg.B_SHARES))
        for node in sorted(gone):
            masked_with = [p for p in self._graph[node] if p in u3]
            if not masked_with:
                continue
            sk_c = self._reconstruct(node, shares, msg.SK_SHARE_OWNERS, msg.SK_SHARES)
            if x25519_public_from_secret(sk_c) != self._pk_c[node]:
                raise SecAggError(f"reconstructed key of node {node} does not match its advertised key")
            for peer in masked_with:
                key = agree(sk_c, self._pk_c[peer], purpose=PURPOSE_MASK, round_id=self.round_id,
                            own_id=node, peer_id=peer)
                # The survivor added sign(peer, node) * PRG(key); undo it.
                (subtract_keys if pairwise_sign(peer, node) > 0 else add_keys).append(key)
        total = self._masked_sum
        assert total is not None
        apply_masks(total, add_keys, subtract_keys)
        try:
            mean, total_weight = decode_sum(total, len(self._u3), self.params)
        except ValueError as exc:
            raise SecAggError(str(exc)) from exc
        return SecAggResult(mean, total_weight, list(self._u3))

    def _check_unmask_reply(self, node: int, reply: Mapping[str, Any]) -> None:
        asked = self._requests3[node]
        expected_b_owners = [*asked[msg.ALIVE], node]
        if reply[msg.B_SHARE_OWNERS] != expected_b_owners or reply[msg.SK_SHARE_OWNERS] != asked[msg.DROPPED]:
            raise SecAggError("returned shares do not match the request")
        x = self._x_of(node)
        for blob in reply[msg.B_SHARES] + reply[msg.SK_SHARES]:
            if share_from_bytes(blob)[0] != x:
                raise SecAggError("share x-coordinate does not match the sender")

    def _reconstruct(self, owner: int, shares: Mapping[int, Mapping[str, Any]], owners_field: str,
                     shares_field: str) -> bytes:
        points: list[Share] = []
        # A node's own reply carries its own self-mask share (never a key share).
        for holder in (*self._graph[owner], owner):
            reply = shares.get(holder)
            if reply is None or owner not in reply[owners_field]:
                continue
            points.append(share_from_bytes(reply[shares_field][reply[owners_field].index(owner)]))
        return combine_shares(points, self._threshold)

    def _x_of(self, node: int) -> int:
        # Same x-coordinate the client used: 1-based position in sorted U1.
        return self._x_index[node]

    # ------------------------------------------------------------- helpers
    def _enter(self, stage: int) -> None:
        if self._next_stage != stage:
            raise SecAggError(f"server is at stage {self._next_stage}, cannot run stage {stage}")
        self._next_stage = stage + 1

    def _accept(
        self,
        replies: Mapping[int, Mapping[str, Any]],
        stage: int,
        expected: Iterable[int],
        check: Callable[[int, Mapping[str, Any]], None],
    ) -> dict[int, Mapping[str, Any]]:
        """Well-formed replies from expected nodes; everybody else has dropped."""
        accepted = {}
        for node in expected:
            reply = replies.get(node)
            if reply is None:
                self._mark_dropped(node, stage, None)
                continue
            try:
                msg.check_message(reply, stage, is_request=False)
                check(node, reply)
            except SecAggError as exc:
                self._mark_dropped(node, stage, str(exc))
                continue
            accepted[node] = reply
        return accepted

    def _mark_dropped(self, node: int, stage: int, reason: str | None) -> None:
        self.dropped[node] = stage
        if reason is not None:
            self.rejected[node] = reason
