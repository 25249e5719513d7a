"""The ClientApp's train and evaluate handlers, called directly with real Messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import evaluate, train
from common.config import FedTextConfig
from common.errors import DataError, FedTextError
from common.messages import instruction_config, parse_evaluate_reply, parse_train_reply
from common.splits import simulated_client_data
from server.global_model import GlobalModel
from tests.conftest import received_message, write_csv

LABELS = ["fresh", "rotten"]
CFG = FedTextConfig(num_hidden_layers=1, max_examples=80, max_length=32, batch_size=8,
                    local_steps=2, freeze="head", lr=1e-3, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def global_arrays():  # noqa: ANN201 - ArrayRecord
    return GlobalModel(CFG, LABELS).arrays()


def _received(content: RecordDict, message_type: str) -> Message:
    return received_message(content, message_type, dst_node_id=7)


def _instruction(arrays, message_type: str, round_number: int = 1) -> Message:  # noqa: ANN001
    config: ConfigRecord = instruction_config(round_number, LABELS)
    return _received(RecordDict({"arrays": arrays, "config": config}), message_type)


def _context(node_config: dict[str, Any], cfg: FedTextConfig = CFG) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config=cfg.to_mapping())


SIMULATED = {"partition-id": 0, "num-partitions": 2}


@pytest.mark.usefixtures("flwr_identity")
def test_train_handler_replies_with_a_valid_update(global_arrays) -> None:  # noqa: ANN001
    msg = _instruction(global_arrays, MessageType.TRAIN)
    reply = train(msg, _context(SIMULATED))
    assert reply.metadata.reply_to_message_id == "instruction-7"
    assert reply.metadata.dst_node_id == 1 and reply.metadata.message_type == MessageType.TRAIN
    expected = {k: v.numpy() for k, v in global_arrays.items()}
    parsed = parse_train_reply(reply.content, expected)
    assert set(parsed.update) == set(expected)  # exactly the trainable names
    # Head only, on the packaged sentence-transformers model: the mean-pooled classifier.
    assert set(expected) == {"classifier.weight", "classifier.bias"}
    for name, u in parsed.update.items():
        assert np.isfinite(u).all() and np.abs(u).max() > 0, name
    train_rows, _ = simulated_client_data(CFG, LABELS, 0, 2)
    assert parsed.num_examples == len(train_rows)
    assert parsed.metrics["train-steps"] == CFG.local_steps


@pytest.mark.usefixtures("flwr_identity")
def test_evaluate_handler_confusion_sums_to_num_examples(global_arrays) -> None:  # noqa: ANN001
    reply = evaluate(_instruction(global_arrays, MessageType.EVALUATE), _context(SIMULATED))
    confusion, loss, num = parse_evaluate_reply(reply.content, len(LABELS))
    _, eval_rows = simulated_client_data(CFG, LABELS, 0, 2)
    assert num == len(eval_rows) > 0
    assert int(confusion.sum()) == num
    assert np.isfinite(loss) and loss > 0


@pytest.mark.usefixtures("flwr_identity")
def test_deployment_node_config_with_a_data_file(global_arrays, tmp_path: Path,  # noqa: ANN001
                                                 sample_rows: list[dict[str, str]]) -> None:
    path = write_csv(tmp_path / "client.csv", sample_rows)
    context = _context({"data-path": str(path)})
    reply = train(_instruction(global_arrays, MessageType.TRAIN), context)
    parsed = parse_train_reply(reply.content, {k: v.numpy() for k, v in global_arrays.items()})
    n_eval = max(1, round(len(sample_rows) * CFG.client_eval_fraction))
    assert parsed.num_examples == len(sample_rows) - n_eval
    reply = evaluate(_instruction(global_arrays, MessageType.EVALUATE), context)
    _, _, num = parse_evaluate_reply(reply.content, len(LABELS))
    assert num == n_eval


@pytest.mark.usefixtures("flwr_identity")
def test_data_file_with_an_unknown_label_names_the_row(global_arrays, tmp_path: Path,  # noqa: ANN001
                                                        sample_rows: list[dict[str, str]]) -> None:
    rows = [dict(r) for r in sample_rows]
    rows[9]["label"] = "mixed"
    path = write_csv(tmp_path / "bad_label.csv", rows)
    with pytest.raises(DataError) as info:
        train(_instruction(global_arrays, MessageType.TRAIN), _context({"data-path": str(path)}))
    message = str(info.value)
    assert isinstance(info.value, FedTextError)
    assert "bad_label.csv" in message and "row 10" in message and "'mixed'" in message
    assert "\n" not in message


@pytest.mark.usefixtures("flwr_identity")
def test_node_config_without_data_is_a_config_error(global_arrays) -> None:  # noqa: ANN001
    with pytest.raises(FedTextError, match="node config"):
        train(_instruction(global_arrays, MessageType.TRAIN), _context({"partition-id": 0}))


@pytest.mark.usefixtures("flwr_identity")
def test_instruction_with_foreign_arrays_is_refused(global_arrays) -> None:  # noqa: ANN001
    from common.messages import to_array_record

    arrays = {k: v.numpy() for k, v in global_arrays.items()}
    arrays["classifier.weight"] = np.zeros((3, arrays["classifier.weight"].shape[1]), np.float32)
    with pytest.raises(ValueError, match="'classifier.weight' has shape"):
        train(_instruction(to_array_record(arrays), MessageType.TRAIN), _context(SIMULATED))
