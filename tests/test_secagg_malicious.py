"""Client-side refusals of a malicious server, signatures, tampered relays."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.secagg import SecAggClient, SecAggError, SecAggParams, SecAggServer, run_local_round

PARAMS = SecAggParams(num_neighbours=4, threshold=0.6, clip=1.0, bits=16, max_weight=100)  # d=4, t=3
IDS = list(range(101, 111))  # 10 nodes, sparse graph


class Round:
    """A round driven by hand so that tests can intercept any request."""

    def __init__(self, ids: list[int] = IDS, params: SecAggParams = PARAMS, **client_kwargs: Any) -> None:
        self.server = SecAggServer(params)
        self.clients = {i: SecAggClient(i, params, **client_kwargs.get(i, {})) for i in ids}
        self.updates = {i: np.full(50, 0.01 * (i % 7), np.float32) for i in ids}
        self.requests = self.server.stage0_requests(ids)
        self.stage = 0

    def answer(self, drop: tuple[int, ...] = ()) -> dict[int, dict]:
        replies = {}
        for node, request in self.requests.items():
            client = self.clients[node]
            if self.stage == 2:
                reply = client.stage2(request, self.updates[node], 10)
            else:
                reply = getattr(client, f"stage{self.stage}")(request)
            if node not in drop:
                replies[node] = reply
        return replies

    def advance(self, drop: tuple[int, ...] = ()) -> None:
        replies = self.answer(drop)
        step = [self.server.stage1_requests, self.server.stage2_requests, self.server.stage3_requests]
        self.requests = step[self.stage](replies)
        self.stage += 1

    def to_stage(self, stage: int, drop_at: dict[int, tuple[int, ...]] | None = None) -> None:
        while self.stage < stage:
            self.advance((drop_at or {}).get(self.stage, ()))


def _non_neighbour(r: Round, node: int) -> int:
    return next(i for i in IDS if i != node and i not in r.server.neighbours(node))


# ----------------------------------------------------------------- stage 3
def test_honest_unmasking_request_is_answered() -> None:
    r = Round()
    r.to_stage(3, {2: (IDS[0],)})
    node = next(n for n in r.requests if IDS[0] in r.server.neighbours(n))
    reply = r.clients[node].stage3(r.requests[node])
    assert reply["sk_share_owners"] == [IDS[0]]
    assert IDS[0] not in reply["b_share_owners"]


def test_asking_for_both_shares_of_a_peer_is_refused() -> None:
    r = Round()
    r.to_stage(3)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    victim = request["alive"][0]
    request["dropped"] = [victim]  # still listed alive too
    with pytest.raises(SecAggError, match="both the self-mask share and the key share"):
        r.clients[node].stage3(request)


def test_asking_about_a_non_neighbour_is_refused() -> None:
    r = Round()
    r.to_stage(3)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    request["dropped"] = [_non_neighbour(r, node)]
    with pytest.raises(SecAggError, match="not neighbours"):
        r.clients[node].stage3(request)


def test_claiming_fewer_than_t_survivors_is_refused() -> None:
    r = Round()
    r.to_stage(3)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    # Pretend all but t-2 neighbours dropped (t-1 holders with the client
    # itself): that would reveal most sk_c shares.
    t = r.server.threshold
    request["dropped"] = request["alive"][t - 2 :]
    request["alive"] = request["alive"][: t - 2]
    with pytest.raises(SecAggError, match=f"not enough survivors: got {t - 2} \\+ itself, need t={t} at stage 2"):
        r.clients[node].stage3(request)


def test_a_second_unmasking_request_is_refused() -> None:
    r = Round()
    r.to_stage(3)
    node = IDS[0]
    honest = r.requests[node]
    r.clients[node].stage3(honest)
    flipped = copy.deepcopy(honest)
    flipped["alive"], flipped["dropped"] = [], honest["alive"]
    with pytest.raises(SecAggError, match="expects a stage 4 request"):
        r.clients[node].stage3(flipped)


def test_peer_that_never_shared_keys_cannot_be_asked_about() -> None:
    r = Round()
    r.to_stage(3, {1: (IDS[1],)})  # IDS[1] dropped in stage 1: nobody masked with it
    node = next(n for n in r.requests if IDS[1] in r.server.neighbours(n))
    request = copy.deepcopy(r.requests[node])
    request["dropped"] = request["dropped"] + [IDS[1]]
    with pytest.raises(SecAggError, match="did not share keys"):
        r.clients[node].stage3(request)


def test_omitting_a_neighbour_from_both_lists_is_refused() -> None:
    r = Round()
    r.to_stage(3)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    request["alive"] = request["alive"][1:]
    with pytest.raises(SecAggError, match="does not say whether"):
        r.clients[node].stage3(request)


# --------------------------------------------------------- stages 1 and 2
def test_keys_of_a_non_neighbour_are_refused_in_stage_1() -> None:
    r = Round()
    r.to_stage(1)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    stranger = _non_neighbour(r, node)
    request["peer_ids"][0] = stranger
    with pytest.raises(SecAggError, match="neighbours of node"):
        r.clients[node].stage1(request)


def test_repeated_public_keys_are_refused_in_stage_1() -> None:
    r = Round()
    r.to_stage(1)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    request["peer_pk_c"][1] = request["peer_pk_c"][0]
    with pytest.raises(SecAggError, match="not all distinct"):
        r.clients[node].stage1(request)


def test_ciphertext_from_a_non_neighbour_is_refused_in_stage_2() -> None:
    r = Round()
    r.to_stage(2)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    request["peer_ids"][0] = _non_neighbour(r, node)
    with pytest.raises(SecAggError, match="not neighbours"):
        r.clients[node].stage2(request, r.updates[node], 10)


@pytest.mark.parametrize("how", ["flip", "swap"])
def test_tampered_or_misrouted_share_ciphertext_is_refused(how: str) -> None:
    r = Round()
    r.to_stage(2)
    node = IDS[0]
    request = copy.deepcopy(r.requests[node])
    if how == "flip":
        ct = bytearray(request["ciphertexts"][0])
        ct[20] ^= 0x80
        request["ciphertexts"][0] = bytes(ct)
    else:  # relabel: the ciphertext of one neighbour claimed to come from another
        request["ciphertexts"][0], request["ciphertexts"][1] = request["ciphertexts"][1], request["ciphertexts"][0]
    with pytest.raises(SecAggError, match="failed authentication"):
        r.clients[node].stage2(request, r.updates[node], 10)


def test_request_from_another_round_is_refused() -> None:
    r = Round()
    r.to_stage(1)
    request = copy.deepcopy(r.requests[IDS[0]])
    request["round_id"] = b"x" * 16
    with pytest.raises(SecAggError, match="different round"):
        r.clients[IDS[0]].stage1(request)


def test_different_params_are_refused() -> None:
    client = SecAggClient(1, PARAMS)
    request = SecAggServer(SecAggParams(num_neighbours=4, threshold=0.6, clip=1.0, bits=16, max_weight=99)).stage0_requests([1, 2, 3])[1]
    with pytest.raises(SecAggError, match="differ"):
        client.stage0(request)


def test_client_without_params_adopts_the_servers() -> None:
    client = SecAggClient(1)
    client.stage0(SecAggServer(PARAMS).stage0_requests([1, 2, 3])[1])
    assert client.params == PARAMS


def test_server_treats_malformed_replies_as_dropouts() -> None:
    r = Round()
    replies = r.answer()
    replies[IDS[3]] = {"stage": 0, "pk_c": b"short", "pk_s": b"x" * 32, "signature": b""}
    r.requests = r.server.stage1_requests(replies)
    assert IDS[3] not in r.requests
    assert r.server.dropped == {IDS[3]: 0}
    assert "32 bytes" in r.server.rejected[IDS[3]]


# --------------------------------------------------------------- Ed25519
def _identities(ids: list[int]) -> tuple[dict[int, Ed25519PrivateKey], list[bytes]]:
    keys = {i: Ed25519PrivateKey.generate() for i in ids}
    return keys, [k.public_key().public_bytes_raw() for k in keys.values()]


def test_signed_round_succeeds() -> None:
    ids = list(range(1, 7))
    keys, public = _identities(ids)
    updates = {i: np.full(20, 0.1, np.float32) for i in ids}
    result = run_local_round(PARAMS, updates, {i: 5 for i in ids}, identity_keys=keys, trusted_identities=public)
    assert result.survivors == ids
    assert np.allclose(result.mean_update, 0.1, atol=1e-3)


@pytest.mark.parametrize("attack", ["forged", "substituted_key", "unsigned", "unknown_signer", "one_key_two_nodes"])
def test_bad_signatures_are_refused(attack: str) -> None:
    ids = list(range(1, 7))
    keys, public = _identities(ids)
    if attack == "unknown_signer":  # node 2 signs with a key outside the federation
        public = [k.public_key().public_bytes_raw() for i, k in keys.items() if i != 2]
    if attack == "one_key_two_nodes":  # one member (node 3's key) poses as node 2 too
        keys[2] = keys[3]

    def tamper(stage: int, node: int, request: dict) -> dict:
        if stage != 1 or 2 not in request["peer_ids"]:
            return request
        request = copy.deepcopy(request)
        j = request["peer_ids"].index(2)
        if attack == "forged":  # signed by someone else's key
            request["peer_signatures"][j] = keys[3].sign(b"anything")[:64]
        elif attack == "substituted_key":  # server swaps in its own key
            request["peer_pk_c"][j] = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        elif attack == "unsigned":
            request["peer_signatures"][j] = b""
        return request

    updates = {i: np.zeros(20, np.float32) for i in ids}
    expected = ("advertise under the same identity key" if attack == "one_key_two_nodes"
                else "no trusted identity key signed the key advertisement of node 2")
    with pytest.raises(SecAggError, match=expected):
        run_local_round(
            PARAMS, updates, {i: 5 for i in ids}, identity_keys=keys, trusted_identities=public, on_request=tamper
        )
