"""Client state survives to_state/from_state between every stage."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from common.secagg import SecAggClient, SecAggError, SecAggParams, SecAggServer, run_local_round
from common.secagg.messages import is_plain_data

PARAMS = SecAggParams(num_neighbours=4, threshold=0.6, clip=1.0, bits=16, max_weight=100)
IDS = [5, 9, 13, 21, 34, 55, 89]


def _run_with(transport) -> tuple:
    """Run a round where every client is rebuilt from ``transport(state)`` per stage."""
    server = SecAggServer(PARAMS)
    states = {i: SecAggClient(i, PARAMS).to_state() for i in IDS}
    updates = {i: np.linspace(-1, 1, 64, dtype=np.float32) * ((i % 3) / 2) for i in IDS}
    requests = server.stage0_requests(IDS)
    steps = [server.stage1_requests, server.stage2_requests, server.stage3_requests, server.finish]
    snapshots = []
    for stage, step in enumerate(steps):
        replies = {}
        for node, request in requests.items():
            client = SecAggClient.from_state(transport(states[node]))
            assert client.next_stage == stage
            if stage == 2:
                replies[node] = client.stage2(transport(request), updates[node], 3)
            else:
                replies[node] = getattr(client, f"stage{stage}")(transport(request))
            states[node] = client.to_state()
            assert is_plain_data(states[node]) and is_plain_data(replies[node])
            # Restoring and saving again is lossless.
            assert SecAggClient.from_state(states[node]).to_state() == states[node]
            replies[node] = transport(replies[node])
        snapshots.append(copy.deepcopy(states[IDS[0]]))
        requests = step(replies)
    return requests, updates, snapshots


def test_round_trip_between_every_stage_through_pickle() -> None:
    result, updates, _ = _run_with(lambda d: pickle.loads(pickle.dumps(d)))
    expected = np.mean([updates[i] for i in IDS], axis=0)
    assert result.survivors == IDS
    assert np.abs(result.mean_update - expected).max() < 1e-3


def test_secrets_are_erased_once_used() -> None:
    _, _, snapshots = _run_with(lambda d: d)
    after0, after1, after2, after3 = snapshots
    assert after1["sk_c"] and after1["self_seed"] and after1["sk_s"]
    assert after2["sk_c"] == after2["self_seed"] == after2["sk_s"] == b""
    assert after2["held_b_shares"] and after3["held_b_shares"] == after3["held_sk_shares"] == []
    assert after3["next_stage"] == 4


def test_local_driver_serialises_by_default() -> None:
    updates = {i: np.full(8, 0.25, np.float32) for i in IDS}
    result = run_local_round(PARAMS, updates, {i: 4 for i in IDS}, drop={IDS[2]: 2})
    assert IDS[2] not in result.survivors


def test_corrupt_state_is_rejected() -> None:
    state = SecAggClient(3, PARAMS).to_state()
    for mutate, match in [
        (lambda s: s.update(version=99), "version"),
        (lambda s: s.pop("sk_c"), "lacks field"),
        (lambda s: s.update(peer_ids="oops"), "wrong type"),
        (lambda s: s.update({"params.bits": 0}), "parameters"),
    ]:
        bad = dict(state)
        mutate(bad)
        with pytest.raises(SecAggError, match=match):
            SecAggClient.from_state(bad)


def test_state_and_messages_fit_flower_config_records() -> None:
    # Flower is only a test dependency: the library itself never imports it.
    flwr_app = pytest.importorskip("flwr.app")
    serde = pytest.importorskip("flwr.common.serde")

    def through_flower(d: dict) -> dict:
        masked = {k: v for k, v in d.items() if isinstance(v, np.ndarray)}
        plain = {k: v for k, v in d.items() if k not in masked}
        proto = serde.config_record_to_proto(flwr_app.ConfigRecord(plain))
        back = dict(serde.config_record_from_proto(proto))
        return {**back, **{k: np.array(v) for k, v in masked.items()}}

    result, _, _ = _run_with(through_flower)
    assert result.survivors == IDS


def test_no_flower_import_in_the_library() -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "common" / "secagg"
    for path in root.glob("*.py"):
        assert "flwr" not in path.read_text(), path


def _through_stage_2():  # noqa: ANN202
    """A 5-node round up to its stage-2 replies (the last node's vector one element short)."""
    params = SecAggParams(num_neighbours=4, threshold=0.6, clip=1.0, bits=16, max_weight=99)
    ids = [11, 22, 33, 44, 55]
    server = SecAggServer(params)
    clients = {i: SecAggClient(i, params) for i in ids}
    requests = server.stage0_requests(ids)
    requests = server.stage1_requests({i: clients[i].stage0(r) for i, r in requests.items()})
    requests = server.stage2_requests({i: clients[i].stage1(r) for i, r in requests.items()})
    update = np.linspace(-0.5, 0.5, 6, dtype=np.float32)
    replies = {i: clients[i].stage2(r, update, 3) for i, r in requests.items()}
    replies[55] = {**replies[55], "masked": replies[55]["masked"][:-1]}
    return server, clients, replies, update


def test_masked_vectors_added_one_at_a_time_unmask_like_the_batch() -> None:
    batch, clients, replies, update = _through_stage_2()
    streamed, clients_s = copy.deepcopy(batch), copy.deepcopy(clients)
    requests = batch.stage3_requests(replies)
    expected = batch.finish({i: clients[i].stage3(r) for i, r in requests.items()})

    streamed.vector_length = 7  # the server knows the model: 6 values + the weight
    streamed.add_masked(99, replies[11])  # a node that was not asked: ignored
    for node in (33, 11, 55, 22, 44):
        streamed.add_masked(node, replies[node])
    streamed.add_masked(11, replies[11])  # a second reply from the same node: ignored
    requests = streamed.stage3_requests()
    result = streamed.finish({i: clients_s[i].stage3(r) for i, r in requests.items()})
    assert result.survivors == expected.survivors == [11, 22, 33, 44]
    assert batch.dropped == streamed.dropped == {55: 2}
    assert streamed.rejected[55] == batch.rejected[55] == "masked vector length differs from 7"
    assert np.array_equal(result.mean_update, expected.mean_update) and result.total_weight == 12
    assert np.abs(result.mean_update - update).max() < 0.01


def test_add_masked_needs_the_length_and_stage_2() -> None:
    server, _, replies, _ = _through_stage_2()
    with pytest.raises(ValueError, match="vector_length"):
        server.add_masked(11, replies[11])
    server.stage3_requests(replies)
    with pytest.raises(SecAggError, match="cannot take masked inputs"):
        server.add_masked(11, replies[11])
