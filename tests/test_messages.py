"""The message contract: valid messages round-trip, malformed peer messages are refused in one line."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.messages import (
    array_names,
    evaluate_reply,
    from_array_record,
    instruction_config,
    pack_instructions,
    packed,
    parse_evaluate_reply,
    parse_instruction,
    parse_train_reply,
    ray_nodes,
    record_bytes,
    to_array_record,
    train_reply,
)

EXPECTED = {"classifier.weight": np.zeros((2, 4), np.float32), "classifier.bias": np.zeros(2, np.float32)}


def _update() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in EXPECTED.items()}


def _one_line_error(fn: Callable[[], object], *parts: str) -> None:
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


# --- arrays -----------------------------------------------------------------------


def test_array_record_round_trip_keeps_order_values_and_size() -> None:
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3).T, "a": np.ones(3, np.float32)}
    record = to_array_record(arrays)  # a transposed (non-contiguous) array too
    back = from_array_record(record)
    assert list(back) == ["b", "a"]
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
    # float32 payload plus one .npy header (128 bytes) per array, as serialized.
    assert 4 * 9 <= record_bytes(record) <= 4 * 9 + 2 * 128


def test_packed_arrays_travel_as_two_and_read_back_the_same() -> None:
    # Flower sends each array as its own object: one request per array on every hop.
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4).T, "steps": np.array(7, dtype=np.int64),
              "half": np.linspace(0, 1, 5).astype(np.float16), "empty": np.zeros((0, 3), np.float32),
              "a.bias": np.ones(3, np.float32)}
    record = packed(to_array_record(arrays))
    assert len(record) == 2
    assert array_names(record) == list(arrays) == array_names(to_array_record(arrays))
    back = from_array_record(record)
    assert list(back) == list(arrays)
    for name, value in from_array_record(to_array_record(arrays)).items():  # as they travel unpacked
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)
    back["w"][0, 0] = 99.0  # writable, and not a view of the record
    assert from_array_record(record)["w"][0, 0] == 0.0
    assert abs(record_bytes(record) - record_bytes(to_array_record(arrays))) < 5 * 128
    assert from_array_record(packed(ArrayRecord())) == {}


@pytest.mark.usefixtures("flwr_identity")
def test_instructions_sharing_arrays_share_one_packed_record() -> None:
    shared = to_array_record(_update())
    messages = [Message(RecordDict({"arrays": shared, "config": instruction_config(1, ["a", "b"])}),
                        dst_node_id=node, message_type="train") for node in (1, 2)]
    messages.append(Message(RecordDict({"config": instruction_config(1, ["a", "b"])}), dst_node_id=3,
                            message_type="train"))
    pack_instructions(messages)
    first, second = (m.content.array_records["arrays"] for m in messages[:2])
    assert first is second and len(first) == 2
    # Flower's FedAvg gives every instruction the same content: packed once, not once per node.
    content = RecordDict({"arrays": to_array_record(_update()), "config": instruction_config(1, ["a", "b"])})
    same = [Message(content, dst_node_id=node, message_type="train") for node in (1, 2, 3)]
    pack_instructions(same)
    assert len(content["arrays"]) == 2 and array_names(content["arrays"]) == list(_update())
    assert "arrays" not in messages[2].content.array_records
    parsed = parse_instruction(messages[0].content)
    for name, value in _update().items():
        np.testing.assert_array_equal(parsed.arrays[name], value)


@pytest.mark.parametrize("layout", [
    b"not json", b"\xff\xfe", b"[" * 100_000, b"7", b'{"w": 1}', b'[["w", "<f4"]]', b'[[1, "<f4", [2]]]',
    b'[["w", "<f4", [100]]]', b'[["w", "<f4", [1]]]', b'[["w", "<q9", [2]]]', b'[["w", "<U1", [2]]]',
    b'[["w", "f4,f4", [1]]]', b'[["w", "V4", [2]]]', b'[["w", "<f4", [1180591620717411303424]]]',
    b'[["w", "<f4", [-1]]]', b'[["w", "<f4", [2.0]]]', b'[["w", "<f4", [true, 2]]]',
    # Negative sizes used to move the reader backwards and copy the buffer again and again.
    b'[["a", "|u1", [6]], ["b", "|u1", [-1]], ["c", "|u1", [1]]]',
    b'[["w", "<f4", [1]], ["w", "<f4", [1]]]',
])
def test_a_packed_record_that_its_layout_does_not_describe_is_refused(layout: bytes) -> None:
    record = packed(to_array_record({"w": np.zeros(2, np.float32)}))
    record["layout"] = Array(np.frombuffer(layout, dtype=np.uint8))
    content = train_reply(_update(), 40, 0.7, 5, 1.5)
    content["arrays"] = record
    _one_line_error(lambda: parse_train_reply(content, EXPECTED), "arrays", "'layout'")


@pytest.mark.parametrize("data", [np.zeros(2, np.float32), np.zeros((2, 4), np.uint8)])
def test_packed_bytes_that_are_not_a_flat_byte_array_are_refused(data: np.ndarray) -> None:
    record = packed(to_array_record({"w": np.zeros(2, np.float32)}))
    record["packed"] = Array(data)
    content = train_reply(_update(), 40, 0.7, 5, 1.5)
    content["arrays"] = record
    _one_line_error(lambda: parse_train_reply(content, EXPECTED), "arrays", "'packed'", "flat uint8")


# --- instructions -------------------------------------------------------------------


def _instruction(**config_changes: object) -> RecordDict:
    config = instruction_config(3, ["rotten", "fresh"])
    for k, v in config_changes.items():
        if v is None:
            del config[k]
        else:
            config[k] = v
    return RecordDict({"arrays": to_array_record(_update()), "config": config})


def test_instruction_round_trip() -> None:
    parsed = parse_instruction(_instruction())
    assert parsed.server_round == 3
    assert parsed.label_names == ["rotten", "fresh"]
    assert parsed.proximal_mu == 0.0
    for k, v in _update().items():
        np.testing.assert_array_equal(parsed.arrays[k], v)
    assert parse_instruction(_instruction(**{"proximal-mu": 0.01})).proximal_mu == 0.01


def test_instruction_without_records() -> None:
    config = instruction_config(1, ["a", "b"])
    _one_line_error(lambda: parse_instruction(RecordDict({"config": config})), "'arrays'")
    _one_line_error(lambda: parse_instruction(RecordDict({"arrays": to_array_record(_update())})), "'config'")


@pytest.mark.parametrize("labels", [None, ["only"], "a,b", ["a", 3]])
def test_instruction_with_bad_labels(labels: object) -> None:
    if labels == ["a", 3]:
        content = _instruction()
        content.config_records["config"]["label-names"] = [1, 2]
    else:
        content = _instruction(**{"label-names": labels})
    _one_line_error(lambda: parse_instruction(content), "'label-names'")


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf")])
def test_instruction_with_bad_proximal_mu(mu: float) -> None:
    _one_line_error(lambda: parse_instruction(_instruction(**{"proximal-mu": mu})), "'proximal-mu'")


# --- train replies ------------------------------------------------------------------


def test_train_reply_round_trip() -> None:
    update = _update()
    parsed = parse_train_reply(train_reply(update, 40, 0.7, 5, 1.5), EXPECTED)
    assert parsed.num_examples == 40
    assert parsed.metrics["train-loss"] == pytest.approx(0.7)
    assert parsed.metrics["train-steps"] == 5
    assert list(parsed.update) == list(EXPECTED)
    for k in update:
        np.testing.assert_array_equal(parsed.update[k], update[k])
        assert parsed.update[k].dtype == np.float32


def test_train_replies_count_clients_per_ray_node_and_skip_odd_placements() -> None:
    a, b = "a1" * 28, "b2" * 28
    replies = [train_reply(_update(), 40, 0.7, 5, 1.5, ray_node=node) for node in (b, a, b)]
    replies.append(train_reply(_update(), 40, 0.7, 5, 1.5))  # deployed: no placement
    odd = train_reply(_update(), 40, 0.7, 5, 1.5)
    odd["placement"] = ConfigRecord({"ray-node": 7})  # a peer's malformed diagnostic
    replies.append(odd)
    assert ray_nodes(replies) == {a: 1, b: 2}
    assert parse_train_reply(replies[0], EXPECTED).num_examples == 40  # the placement does not disturb the update


def _reply_with(arrays: dict[str, np.ndarray] | None = None, metrics: dict | None = None,
                drop: str | None = None) -> RecordDict:
    content = train_reply(_update(), 40, 0.7, 5, 1.5)
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    if drop is not None:
        del content[drop]
    return content


def test_train_reply_missing_records() -> None:
    _one_line_error(lambda: parse_train_reply(_reply_with(drop="arrays"), EXPECTED), "'arrays'")
    _one_line_error(lambda: parse_train_reply(_reply_with(drop="metrics"), EXPECTED), "'metrics'")


def test_train_reply_wrong_array_name() -> None:
    bad = _update()
    bad["classifier.bias_"] = bad.pop("classifier.bias")
    _one_line_error(lambda: parse_train_reply(_reply_with(arrays=bad), EXPECTED), "'classifier.bias")
    missing = _update()
    del missing["classifier.weight"]
    _one_line_error(lambda: parse_train_reply(_reply_with(arrays=missing), EXPECTED), "'classifier.weight'")


def test_train_reply_wrong_shape() -> None:
    bad = _update()
    bad["classifier.weight"] = bad["classifier.weight"].reshape(4, 2)
    _one_line_error(lambda: parse_train_reply(_reply_with(arrays=bad), EXPECTED),
                    "'classifier.weight'", "(4, 2)", "(2, 4)")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_train_reply_non_finite(value: float) -> None:
    bad = _update()
    bad["classifier.bias"][1] = value
    _one_line_error(lambda: parse_train_reply(_reply_with(arrays=bad), EXPECTED), "'classifier.bias'", "NaN or inf")


@pytest.mark.parametrize("num", [-1, 2.5, -3.0, None])
def test_train_reply_bad_num_examples(num: object) -> None:
    metrics = {"train-loss": 0.5}
    if num is not None:
        metrics["num-examples"] = num
    _one_line_error(lambda: parse_train_reply(_reply_with(metrics=metrics), EXPECTED), "'num-examples'")


def test_train_reply_whole_float_num_examples_is_accepted() -> None:
    parsed = parse_train_reply(_reply_with(metrics={"num-examples": 12.0}), EXPECTED)
    assert parsed.num_examples == 12 and isinstance(parsed.num_examples, int)


# --- evaluate replies ---------------------------------------------------------------


def _metrics_for(cm: list[list[int]], loss: float = 0.4) -> dict:
    cm_arr = np.asarray(cm)
    return {"confusion_matrix": cm, "loss": loss, "accuracy": float(np.trace(cm_arr) / cm_arr.sum())}


def test_evaluate_reply_round_trip() -> None:
    cm = [[5, 1], [2, 7]]
    confusion, loss, num = parse_evaluate_reply(evaluate_reply(_metrics_for(cm), 15), 2)
    assert confusion.tolist() == cm and num == 15 and loss == pytest.approx(0.4)


def _eval_content(**metrics: object) -> RecordDict:
    base = {"num-examples": 15, "loss": 0.4, "accuracy": 0.8, "confusion": [5, 1, 2, 7]}
    base.update(metrics)
    return RecordDict({"metrics": MetricRecord({k: v for k, v in base.items() if v is not None})})


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"confusion": [5, 1, 2, 6]}, "'confusion' does not add up"),
        ({"confusion": [5, 1, 2]}, "'confusion' must hold 4"),
        ({"confusion": [5, 1, 2, 7, 0]}, "'confusion' must hold 4"),
        ({"confusion": [6, 1, 9, -1]}, "'confusion' must hold 4 counts >= 0"),
        ({"confusion": None}, "'confusion'"),
        ({"num-examples": -15}, "'num-examples'"),
        ({"num-examples": 14.5}, "'num-examples'"),
        ({"num-examples": None}, "'num-examples'"),
        ({"loss": float("nan")}, "'loss'"),
        ({"loss": None}, "'loss'"),
    ],
)
def test_evaluate_reply_malformed(changes: dict, needle: str) -> None:
    _one_line_error(lambda: parse_evaluate_reply(_eval_content(**changes), 2), needle)


def test_evaluate_reply_without_metrics() -> None:
    _one_line_error(lambda: parse_evaluate_reply(RecordDict({}), 2), "'metrics'")


def test_instruction_config_contents() -> None:
    config = instruction_config(4, ["x", "y", "z"])
    assert isinstance(config, ConfigRecord)
    assert dict(config) == {"server-round": 4, "label-names": ["x", "y", "z"]}


def test_trial_config_travels_in_instructions_and_is_checked() -> None:
    from flwr.app import ArrayRecord, RecordDict

    from common.messages import ARRAYS, CONFIG, TRIAL_CONFIG

    config = instruction_config(3, ["a", "b"], {"lr": 0.001, "batch-size": 8})
    parsed = parse_instruction(RecordDict({ARRAYS: ArrayRecord({}), CONFIG: config}))
    assert parsed.trial == {"lr": 0.001, "batch-size": 8}
    assert parse_instruction(RecordDict({ARRAYS: ArrayRecord({}), CONFIG: instruction_config(1, ["a", "b"])})).trial == {}
    bad = instruction_config(1, ["a", "b"])
    bad[TRIAL_CONFIG] = "[1, 2]"
    with pytest.raises(ValueError, match="'trial-config' must be a JSON object"):
        parse_instruction(RecordDict({ARRAYS: ArrayRecord({}), CONFIG: bad}))


def test_a_trial_cannot_move_the_data_or_the_run() -> None:
    from common.config import FedTextConfig
    from common.errors import ConfigError

    cfg = FedTextConfig()
    assert cfg.with_trial({"lr": 0.002, "rounds": 4}).rounds == 4
    for key in ("data", "client-eval-fraction", "out", "clients", "client-cpus"):
        with pytest.raises(ConfigError, match=f"'{key}' cannot be set by a trial"):
            cfg.with_trial({key: "x"})
    with pytest.raises(ConfigError, match="'lr'"):
        cfg.with_trial({"lr": 5})
