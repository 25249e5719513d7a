"""Client side of SecAgg+: one object per node and round, stage by stage.

Typical use with a stateless transport (each stage in a fresh process)::

    client = SecAggClient(node_id, params) if stage == 0 else SecAggClient.from_state(state)
    reply = client.stage2(request, update, num_examples)   # or stage0/1/3(request)
    state = client.to_state()

Every stage validates the request and raises :class:`SecAggError` instead of
answering when the request is malformed or would break privacy (see
:meth:`SecAggClient.stage3` for the malicious-server checks). Secrets that are
no longer needed (b, the c and s secret keys, the shares held for peers) are
erased from the state as soon as their last use has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import messages as msg
from .encoding import encode_update
from .errors import SecAggError
from .graph import graph_degree, neighbour_graph
from .masking import apply_masks, pairwise_sign
from .params import SecAggParams
from .primitives import (
    KEY_BYTES,
    PURPOSE_MASK,
    PURPOSE_SHARES,
    agree,
    decrypt_shares,
    encrypt_shares,
    generate_x25519,
    load_identity_key,
    node_id_bytes,
    random_bytes,
    sign_advertisement,
    signed_by,
)
from .shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split_secret

STATE_VERSION = 2
DONE = 4
MIN_ROUND_ID_BYTES = 16


@dataclass
class _ClientState:
    """Everything a client must remember between stages; plain values only."""

    node_id: int
    next_stage: int = 0
    round_id: bytes = b""
    num_clients: int = 0
    sk_c: bytes = b""
    pk_c: bytes = b""
    sk_s: bytes = b""
    pk_s: bytes = b""
    self_seed: bytes = b""
    verify_signatures: int = 0
    own_identity: bytes = b""
    trusted_keys: list = field(default_factory=list)
    node_ids: list = field(default_factory=list)
    threshold: int = 0
    peer_ids: list = field(default_factory=list)
    peer_pk_c: list = field(default_factory=list)
    peer_pk_s: list = field(default_factory=list)
    sharers: list = field(default_factory=list)
    held_b_shares: list = field(default_factory=list)
    held_sk_shares: list = field(default_factory=list)
    own_b_share: bytes = b""


class SecAggClient:
    """One participant of one SecAgg+ round.

    Parameters
    ----------
    node_id : int
        This node's id, in [0, 2**64).
    params : SecAggParams, optional
        If given, the stage-0 request must carry exactly these parameters;
        if omitted, the server's parameters are adopted after validation.
    identity_key : bytes or Ed25519PrivateKey, optional
        Long-term identity key; when set, the key advertisement is signed.
        Used in stage 0 only and never stored in the state.
    trusted_identities : collection of bytes, optional
        Raw Ed25519 public keys of the federation's members (node ids are
        assigned at connection time, so trust is by key, not by id). When
        given, every neighbour's advertisement must be signed by one of these
        keys, and no two neighbours (nor this client) may sign with the same
        key: a server cannot substitute its own public keys, and one member
        cannot pose as several nodes.
    """

    def __init__(
        self,
        node_id: int,
        params: SecAggParams | None = None,
        *,
        identity_key: bytes | Ed25519PrivateKey | None = None,
        trusted_identities: Collection[bytes] | None = None,
    ) -> None:
        node_id_bytes(node_id)  # validates the range
        self._params = params
        self._identity = load_identity_key(identity_key) if identity_key is not None else None
        self._s = _ClientState(node_id=node_id)
        if self._identity is not None:
            self._s.own_identity = self._identity.public_key().public_bytes_raw()
        if trusted_identities is not None:
            self._s.verify_signatures = 1
            self._s.trusted_keys = sorted({bytes(k) for k in trusted_identities})

    # ----------------------------------------------------------- properties
    @property
    def node_id(self) -> int:
        return self._s.node_id

    @property
    def params(self) -> SecAggParams | None:
        return self._params

    @property
    def next_stage(self) -> int:
        """The stage whose request this client expects next (4 = finished)."""
        return self._s.next_stage

    # ------------------------------------------------------------ stage 0
    def stage0(self, request: Mapping[str, Any]) -> msg.Message:
        """Advertise keys: fresh X25519 pairs c (masks) and s (shares), signed."""
        self._start_stage(request, 0)
        self._adopt_params(request)
        round_id = request[msg.ROUND_ID]
        if len(round_id) < MIN_ROUND_ID_BYTES:
            raise SecAggError(f"round_id must have at least {MIN_ROUND_ID_BYTES} bytes")
        s = self._s
        s.round_id, s.num_clients = round_id, request[msg.NUM_CLIENTS]
        s.sk_c, s.pk_c = generate_x25519()
        s.sk_s, s.pk_s = generate_x25519()
        s.self_seed = random_bytes(KEY_BYTES)
        signature = b""
        if self._identity is not None:
            signature = sign_advertisement(self._identity, round_id, s.node_id, s.pk_c, s.pk_s)
        s.next_stage = 1
        return {msg.STAGE: 0, msg.PK_C: s.pk_c, msg.PK_S: s.pk_s, msg.SIGNATURE: signature}

    def _adopt_params(self, request: Mapping[str, Any]) -> None:
        prefix = msg.PARAMS_PREFIX
        offered = {k[len(prefix) :]: v for k, v in request.items() if k.startswith(prefix)}
        try:
            server_params = SecAggParams.from_dict(offered)
            server_params.validate(request[msg.NUM_CLIENTS])
        except ValueError as exc:
            raise SecAggError(f"server sent unusable parameters: {exc}") from exc
        if self._params is None:
            self._params = server_params
        elif server_params != self._params:
            raise SecAggError(f"server parameters {server_params} differ from this client's {self._params}")

    # ------------------------------------------------------------ stage 1
    def stage1(self, request: Mapping[str, Any]) -> msg.Message:
        """Share keys: Shamir-share b and sk_c among the neighbours (encrypted) and itself.

        The client keeps its own share of b, so that its self-mask can be
        rebuilt with t - 1 surviving neighbours; its own share of sk_c is
        useless (it is only needed once this client has dropped) and is
        discarded.
        """
        self._start_stage(request, 1)
        s, params = self._s, self._require_params()
        node_ids: list[int] = request[msg.NODE_IDS]
        self._check_node_list(node_ids)
        degree = graph_degree(len(node_ids), params.num_neighbours)
        threshold = params.threshold_for_degree(degree)
        if threshold > degree + 1:
            raise SecAggError(
                f"not enough survivors: got {len(node_ids)}, need t={threshold} at stage 0 "
                f"(only {degree} neighbours per node, {degree + 1} share holders)"
            )
        expected = set(neighbour_graph(node_ids, params.num_neighbours, s.round_id)[s.node_id])
        peers: list[int] = request[msg.PEER_IDS]
        if len(set(peers)) != len(peers) or set(peers) != expected:
            raise SecAggError(
                f"server forwarded keys of nodes {sorted(peers)} but the neighbours of node "
                f"{s.node_id} are {sorted(expected)}"
            )
        self._check_peer_keys(request)
        order = sorted(range(len(peers)), key=lambda i: peers[i])
        s.peer_ids = [peers[i] for i in order]
        s.peer_pk_c = [request[msg.PEER_PK_C][i] for i in order]
        s.peer_pk_s = [request[msg.PEER_PK_S][i] for i in order]
        s.node_ids, s.threshold = list(node_ids), threshold

        xs = [self._x_of(p) for p in s.peer_ids] + [self._x_of(s.node_id)]
        *b_shares, own_b_share = split_secret(s.self_seed, threshold, xs)
        *sk_shares, _ = split_secret(s.sk_c, threshold, xs)
        s.own_b_share = share_to_bytes(own_b_share)
        ciphertexts = [
            encrypt_shares(
                self._share_key(peer, pk_s),
                share_to_bytes(b_share) + share_to_bytes(sk_share),
                sender=s.node_id,
                receiver=peer,
                round_id=s.round_id,
            )
            for peer, pk_s, b_share, sk_share in zip(s.peer_ids, s.peer_pk_s, b_shares, sk_shares)
        ]
        s.next_stage = 2
        return {msg.STAGE: 1, msg.PEER_IDS: list(s.peer_ids), msg.CIPHERTEXTS: ciphertexts}

    def _check_node_list(self, node_ids: list[int]) -> None:
        s = self._s
        if any(a >= b for a, b in zip(node_ids, node_ids[1:])):
            raise SecAggError("node_ids must be sorted and distinct")
        if s.node_id not in node_ids:
            raise SecAggError(f"node {s.node_id} is missing from the participant list")
        if len(node_ids) > s.num_clients:
            # More summands than announced in stage 0 could overflow the sum.
            raise SecAggError(f"{len(node_ids)} participants exceed num_clients={s.num_clients} of stage 0")

    def _check_peer_keys(self, request: Mapping[str, Any]) -> None:
        s = self._s
        peers = request[msg.PEER_IDS]
        all_keys = [s.pk_c, s.pk_s, *request[msg.PEER_PK_C], *request[msg.PEER_PK_S]]
        if any(len(k) != KEY_BYTES for k in all_keys):
            raise SecAggError(f"public keys must be {KEY_BYTES} bytes")
        if len(set(all_keys)) != len(all_keys):
            # A repeated key would let the server make a client agree with itself.
            raise SecAggError("advertised public keys are not all distinct")
        if not s.verify_signatures:
            return
        signer_of: dict[bytes, int] = {s.own_identity: s.node_id} if s.own_identity else {}
        for peer, pk_c, pk_s, sig in zip(
            peers, request[msg.PEER_PK_C], request[msg.PEER_PK_S], request[msg.PEER_SIGNATURES]
        ):
            signer = next((k for k in s.trusted_keys if signed_by(k, sig, s.round_id, peer, pk_c, pk_s)), None)
            if signer is None:
                raise SecAggError(f"no trusted identity key signed the key advertisement of node {peer}")
            if signer in signer_of:
                raise SecAggError(f"nodes {signer_of[signer]} and {peer} advertise under the same identity key")
            signer_of[signer] = peer

    # ------------------------------------------------------------ stage 2
    def stage2(self, request: Mapping[str, Any], update: np.ndarray, weight: int,
               noise: np.ndarray | None = None) -> msg.Message:
        """Masked input: encode the weighted update and add self and pairwise masks.

        ``noise``: integer noise added to the encoding before masking (the
        client's share of client-level DP noise, ``common.privacy.distributed``).

        Only neighbours that sent this client their shares (the request's
        ``peer_ids``) are masked with; the others dropped in stage 1.
        """
        self._start_stage(request, 2)
        s, params = self._s, self._require_params()
        senders: list[int] = request[msg.PEER_IDS]
        if len(set(senders)) != len(senders):
            raise SecAggError("duplicate senders in the stage 2 request")
        self._require_neighbours(senders)
        if len(senders) + 1 < s.threshold:
            raise SecAggError(
                f"not enough survivors: got {len(senders)} + itself, need t={s.threshold} at stage 1 "
                f"(neighbours of node {s.node_id} that shared keys)"
            )
        held = [self._open_shares(j, ct) for j, ct in zip(senders, request[msg.CIPHERTEXTS])]

        encoded = encode_update(update, weight, params, noise=noise)
        add_keys, subtract_keys = [s.self_seed], []
        for peer in senders:
            key = agree(
                s.sk_c, self._peer_pk_c(peer), purpose=PURPOSE_MASK,
                round_id=s.round_id, own_id=s.node_id, peer_id=peer,
            )
            (add_keys if pairwise_sign(s.node_id, peer) > 0 else subtract_keys).append(key)
        apply_masks(encoded, add_keys, subtract_keys)

        order = sorted(range(len(senders)), key=lambda i: senders[i])
        s.sharers = [senders[i] for i in order]
        s.held_b_shares = [held[i][0] for i in order]
        s.held_sk_shares = [held[i][1] for i in order]
        # The masks are out: b and the secret keys must not survive this stage.
        s.self_seed = s.sk_c = s.sk_s = b""
        s.next_stage = 3
        return {msg.STAGE: 2, msg.MASKED: encoded}

    def _open_shares(self, sender: int, ciphertext: bytes) -> tuple[bytes, bytes]:
        s = self._s
        plaintext = decrypt_shares(
            self._share_key(sender, self._peer_pk_s(sender)),
            ciphertext,
            sender=sender,
            receiver=s.node_id,
            round_id=s.round_id,
        )
        if len(plaintext) != 2 * SHARE_BYTES:
            raise SecAggError(f"shares from node {sender} have the wrong size")
        b_share, sk_share = plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]
        own_x = self._x_of(s.node_id)
        if share_from_bytes(b_share)[0] != own_x or share_from_bytes(sk_share)[0] != own_x:
            raise SecAggError(f"shares from node {sender} were made for another recipient")
        return b_share, sk_share

    # ------------------------------------------------------------ stage 3
    def stage3(self, request: Mapping[str, Any]) -> msg.Message:
        """Unmasking: b-shares of surviving peers and its own, sk-shares of dropped peers.

        Malicious-server checks (each raises :class:`SecAggError`): a peer in
        both lists (its b and sk_c together would unmask its input), a peer
        that is not a neighbour or did not share keys with this client, a
        neighbour left out of both lists, fewer than t claimed survivors, or a
        second unmasking request (the state only allows one).
        """
        self._start_stage(request, 3)
        s = self._s
        alive: list[int] = request[msg.ALIVE]
        dropped: list[int] = request[msg.DROPPED]
        if len(set(alive)) != len(alive) or len(set(dropped)) != len(dropped):
            raise SecAggError("duplicate node ids in the unmasking request")
        both = sorted(set(alive) & set(dropped))
        if both:
            raise SecAggError(
                f"server asked for both the self-mask share and the key share of nodes {both}; refusing"
            )
        self._require_neighbours(alive + dropped)
        sharers = set(s.sharers)
        unknown = sorted(set(alive + dropped) - sharers)
        if unknown:
            raise SecAggError(f"nodes {unknown} did not share keys with node {s.node_id}; refusing")
        missing = sorted(sharers - set(alive) - set(dropped))
        if missing:
            raise SecAggError(f"unmasking request does not say whether nodes {missing} survived")
        if len(alive) + 1 < s.threshold:
            raise SecAggError(
                f"not enough survivors: got {len(alive)} + itself, need t={s.threshold} at stage 2 "
                f"(claimed surviving neighbours of node {s.node_id})"
            )
        b_by_owner = dict(zip(s.sharers, s.held_b_shares))
        sk_by_owner = dict(zip(s.sharers, s.held_sk_shares))
        reply = {
            msg.STAGE: 3,
            msg.B_SHARE_OWNERS: [*alive, s.node_id],
            msg.B_SHARES: [*(b_by_owner[p] for p in alive), s.own_b_share],
            msg.SK_SHARE_OWNERS: list(dropped),
            msg.SK_SHARES: [sk_by_owner[p] for p in dropped],
        }
        s.held_b_shares, s.held_sk_shares, s.own_b_share = [], [], b""
        s.next_stage = DONE
        return reply

    # ------------------------------------------------------------- helpers
    def _start_stage(self, request: Mapping[str, Any], stage: int) -> None:
        if self._s.next_stage != stage:
            raise SecAggError(
                f"node {self._s.node_id} expects a stage {self._s.next_stage} request, got stage {stage}"
            )
        msg.check_message(request, stage, is_request=True)
        if stage > 0 and request[msg.ROUND_ID] != self._s.round_id:
            raise SecAggError("request belongs to a different round")

    def _require_params(self) -> SecAggParams:
        if self._params is None:  # unreachable after a successful stage 0
            raise SecAggError("client has no parameters")
        return self._params

    def _require_neighbours(self, nodes: list[int]) -> None:
        strangers = sorted(set(nodes) - set(self._s.peer_ids))
        if strangers:
            raise SecAggError(f"nodes {strangers} are not neighbours of node {self._s.node_id}; refusing")

    def _x_of(self, node: int) -> int:
        # Share x-coordinate: 1-based position in the public participant list.
        return self._s.node_ids.index(node) + 1

    def _peer_pk_c(self, peer: int) -> bytes:
        return self._s.peer_pk_c[self._s.peer_ids.index(peer)]

    def _peer_pk_s(self, peer: int) -> bytes:
        return self._s.peer_pk_s[self._s.peer_ids.index(peer)]

    def _share_key(self, peer: int, peer_pk_s: bytes) -> bytes:
        s = self._s
        return agree(
            s.sk_s, peer_pk_s, purpose=PURPOSE_SHARES, round_id=s.round_id, own_id=s.node_id, peer_id=peer
        )

    # ------------------------------------------------------- serialisation
    def to_state(self) -> dict[str, Any]:
        """Flat plain-data snapshot: ``dict[str, bytes | int | float | str | list]``.

        The identity key is not included (it is only needed in stage 0).
        """
        state: dict[str, Any] = {"version": STATE_VERSION}
        for f in fields(_ClientState):
            value = getattr(self._s, f.name)
            state[f.name] = list(value) if isinstance(value, list) else value
        if self._params is not None:
            for name, value in self._params.to_dict().items():
                state[msg.PARAMS_PREFIX + name] = value
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "SecAggClient":
        """Rebuild a client from :meth:`to_state` output.

        Raises
        ------
        SecAggError
            If the state is from another version, lacks fields or has values
            of the wrong type.
        """
        if state.get("version") != STATE_VERSION:
            raise SecAggError(f"unsupported client state version {state.get('version')!r}")
        values: dict[str, Any] = {}
        for f in fields(_ClientState):
            if f.name not in state:
                raise SecAggError(f"client state lacks field {f.name!r}")
            value = state[f.name]
            expected = {"int": int, "bytes": bytes, "list": list}[f.type]
            if not isinstance(value, expected):
                raise SecAggError(f"client state field {f.name!r} has the wrong type")
            values[f.name] = list(value) if expected is list else value
        prefix = msg.PARAMS_PREFIX
        offered = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            params = SecAggParams.from_dict(offered) if offered else None
        except ValueError as exc:
            raise SecAggError(f"client state has invalid parameters: {exc}") from exc
        client = cls(values["node_id"], params)
        client._s = _ClientState(**values)
        return client
