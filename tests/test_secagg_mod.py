"""client/secagg_mod.py driven in-process by the SecAgg+ server, as Flower would.

Three nodes, each with its own Context (node config + state, kept between
stages as in deployment), go through the four stages. The train handler behind
the mod returns a fixed update, so the unmasked mean is known. With identity
files in the node config the advertisements are signed and checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict

from client.secagg_mod import secagg_mod
from common.config import FedTextConfig, secagg_params
from common.messages import ARRAYS, METRICS, NUM_EXAMPLES, SECAGG, SECAGG_MASKED, packed, train_reply
from common.secagg import SecAggError, SecAggServer, quantization_error_bound
from tests.conftest import received_message

pytestmark = pytest.mark.usefixtures("flwr_identity")

NODES = [11, 22, 33]
CFG = FedTextConfig(clients=3, min_clients=3)


def _update(node: int) -> np.ndarray:
    return np.full(6, node / 100, dtype=np.float32)


def _handler(msg: Message, context: Context) -> Message:
    """Stands in for the train handler: a fixed update and example count per node."""
    return Message(train_reply({"w": _update(context.node_id)}, 10, 0.5, 1, 0.1), reply_to=msg)


def _message(node: int, request: dict[str, Any], stage: int) -> Message:
    content = RecordDict({SECAGG: ConfigRecord(dict(request))})
    if stage == 2:  # the train instruction rides on stage 2, its arrays packed as the server sends them
        content[ARRAYS] = packed(ArrayRecord({"w": Array(np.zeros(6, dtype=np.float32))}))
    return received_message(content, MessageType.TRAIN, dst_node_id=node)


def _answer(reply: Message) -> dict[str, Any]:
    answer = dict(reply.content.config_records[SECAGG])
    if SECAGG_MASKED in reply.content.array_records:
        answer["masked"] = reply.content.array_records[SECAGG_MASKED]["masked"].numpy()
    return answer


def run_round(node_configs: dict[int, dict[str, str]]) -> Any:
    contexts = {n: Context(run_id=1, node_id=n, node_config=node_configs.get(n, {}), state=RecordDict(),
                           run_config=dict(CFG.to_mapping())) for n in NODES}
    server = SecAggServer(secagg_params(CFG))
    requests = server.stage0_requests(NODES)
    steps = [server.stage1_requests, server.stage2_requests, server.stage3_requests, server.finish]
    for stage, step in enumerate(steps):
        replies = {n: secagg_mod(_message(n, r, stage), contexts[n], _handler) for n, r in requests.items()}
        errors = {n: m.error.reason for n, m in replies.items() if m.has_error()}
        assert not errors, errors
        requests = step({n: _answer(m) for n, m in replies.items()})
    return requests


def _identity_configs(certs: Path) -> dict[int, dict[str, str]]:
    clients = certs / "clients"
    return {n: {"identity-key": str(clients / f"client-{i}.id.key"),
                "trusted-identities": str(clients / "identities.json")} for i, n in enumerate(NODES, start=1)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deploy.certs import make_certificates

    root = tmp_path_factory.mktemp("identities")
    make_certificates(root, ["localhost"], clients=3)
    return root


@pytest.mark.parametrize("signed", [False, True])
def test_the_mod_masks_and_the_server_unmasks_the_mean(certs: Path, signed: bool) -> None:
    mean, weight, survivors = run_round(_identity_configs(certs) if signed else {})
    assert survivors == NODES and weight == 30
    expected = np.mean([_update(n) for n in NODES], axis=0)
    assert np.abs(mean - expected).max() <= quantization_error_bound(secagg_params(CFG), len(NODES), weight)


def test_a_node_signing_outside_the_federation_is_refused(certs: Path, tmp_path: Path) -> None:
    from deploy.certs import make_certificates

    # Node 33 signs with another federation's identity: its neighbours refuse to
    # mask with it (as they would with keys a server slipped in).
    other = tmp_path / "other"
    make_certificates(other, ["localhost"], clients=3)
    configs = _identity_configs(certs)
    configs[33] = {"identity-key": str(other / "clients" / "client-3.id.key"),
                   "trusted-identities": str(other / "clients" / "identities.json")}
    with pytest.raises(SecAggError, match="no trusted identity key signed the key advertisement of node 33"):
        run_round(configs)


def test_only_stage_2_trains_and_no_update_stays_on_the_node() -> None:
    context = Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config=dict(CFG.to_mapping()))
    server = SecAggServer(secagg_params(CFG))
    requests = server.stage0_requests(NODES)
    trained: list[int] = []

    def handler(msg: Message, context: Context) -> Message:
        trained.append(context.node_id)
        return _handler(msg, context)

    contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                           run_config=dict(CFG.to_mapping())) for n in NODES}
    contexts[11] = context
    for stage, step in enumerate([server.stage1_requests, server.stage2_requests]):
        replies = {n: secagg_mod(_message(n, r, stage), contexts[n], handler) for n, r in requests.items()}
        assert not trained  # keys and shares only: no training, no arrays either way
        assert not any(m.content.array_records for m in replies.values())
        requests = step({n: _answer(m) for n, m in replies.items()})
    reply = secagg_mod(_message(11, requests[11], 2), context, handler)
    assert trained == [11]
    masked = reply.content.array_records[SECAGG_MASKED]["masked"].numpy()
    assert masked.dtype == np.uint32 and masked.size == _update(11).size + 1  # the weight rides under the mask
    clear = dict(reply.content.metric_records[METRICS])
    assert clear["train-loss"] == 0.5 and NUM_EXAMPLES not in clear  # the example count only under the mask
    assert not context.state.array_records  # masked as soon as it existed: nothing kept between stages


def test_a_failed_training_is_a_dropout_at_stage_2() -> None:
    contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                           run_config=dict(CFG.to_mapping())) for n in NODES}
    server = SecAggServer(secagg_params(CFG))
    requests = server.stage0_requests(NODES)
    for stage, step in enumerate([server.stage1_requests, server.stage2_requests]):
        replies = {n: secagg_mod(_message(n, r, stage), contexts[n], _handler) for n, r in requests.items()}
        requests = step({n: _answer(m) for n, m in replies.items()})

    def failing(msg: Message, context: Context) -> Message:
        return Message(Error(code=0, reason="budget spent"), reply_to=msg)

    reply = secagg_mod(_message(33, requests[33], 2), contexts[33], failing)
    assert reply.has_error() and reply.error.reason == "budget spent"
