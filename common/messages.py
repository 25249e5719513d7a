"""What the server and clients say to each other: every message's fields, in one place.

=====================  =========================================================
message                content (a Flower ``RecordDict``)
=====================  =========================================================
train instruction      ``"arrays"``: trainable parameters of the global model
(server -> client)     ``"config"``: ``server-round``, ``label-names`` (the
                       federation's labels, in id order), ``proximal-mu`` (FedProx),
                       ``trial-config`` (a tuning trial's settings over the run
                       config, JSON; absent outside a study), ``dp-noise-floor``
                       (dp client under SecAgg: the fewest survivors whose noise
                       the sum must hold; each client adds 1/floor of it)
train reply            ``"arrays"``: the client's **update** (trained minus
(client -> server)     received), trainable parameters only, float32
                       ``"metrics"``: ``num-examples`` (1 under dp client),
                       ``train-loss`` (not under DP: it reads the rows),
                       ``train-steps``, ``train-seconds``; ``dp-epsilon``,
                       ``dp-noise-multiplier`` (dp record: the client's own
                       accounting)
                       ``"placement"`` (simulated clients only): ``ray-node``,
                       the id of the Ray node whose actor trained
evaluate instruction   as the train instruction (``"arrays"`` = global weights)
evaluate reply         ``"metrics"``: ``num-examples``, ``loss``, ``accuracy``,
                       ``confusion`` (row-major confusion matrix, for exact
                       aggregation)
secure aggregation     with ``secagg`` on, a train round is four exchanges; each
(both ways)            message adds a ``"secagg"`` ConfigRecord (the SecAgg+
                       stage's request or reply, ``common/secagg/messages.py``),
                       the stage-0 instruction also carries the fields above, and
                       the stage-2 reply carries ``"secagg-masked"``: the masked
                       update as one uint32 array. No update travels in the clear.
end of run             message type ``query.run_end``, to every connected node
(server -> client)     once the run is over: ``"config"``: ``status``
                       (``completed`` | ``failed``). The reply is empty. A
                       deployed client exits on it (``fedtext client``).
=====================  =========================================================

Frozen parameters never travel: both sides build the same frozen model
(``common.model``). Instructions' arrays, and a train reply's in the clear,
travel :func:`packed` (two arrays: the layout and the bytes; Flower sends
each array as its own object); :func:`from_array_record` reads either form.
Replies are untrusted input from a peer: the ``parse_*`` functions check them
and raise ``ValueError`` with one line naming the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
LABEL_NAMES = "label-names"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
TRIAL_CONFIG = "trial-config"
DP_NOISE_FLOOR = "dp-noise-floor"
SECAGG = "secagg"
SECAGG_MASKED = "secagg-masked"
PLACEMENT = "placement"
RAY_NODE = "ray-node"
RUN_END = "query.run_end"  # a message type, not a record name
RUN_STATUSES = ("completed", "failed")


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Name -> numpy array, as an ``ArrayRecord`` (order preserved)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """``ArrayRecord`` (one array per name, or :func:`packed`) -> name -> numpy array."""
    if is_packed(record):
        return _unpacked(record)
    return {name: array.numpy() for name, array in record.items()}


# Flower sends each array of a record as its own object: one request per array
# on every hop (ServerApp -> SuperLink -> SuperNode -> ClientApp), each costing
# a Python web server milliseconds of CPU. A model's ~40 trainable tensors
# travel instead as one byte buffer (in Flower's 5 MiB chunks) and its layout:
# a deployed evaluation exchange took 3.9 s with one array per tensor.
LAYOUT = "layout"  # JSON [[name, dtype, shape], ...] as uint8
PACKED = "packed"  # the arrays' bytes, one after the other, as uint8
_KINDS = "fiub"  # the dtypes a layout may name: numbers and booleans, as a model's tensors are


def packed(record: ArrayRecord) -> ArrayRecord:
    """The same arrays as two: their layout and their bytes (:func:`from_array_record` reads both forms)."""
    arrays = from_array_record(record)
    layout = [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]
    data = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays.values()]) \
        if arrays else np.zeros(0, dtype=np.uint8)
    return ArrayRecord({LAYOUT: Array(np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8)),
                        PACKED: Array(data)})


def is_packed(record: ArrayRecord) -> bool:
    return set(record.keys()) == {LAYOUT, PACKED}


def array_names(record: ArrayRecord) -> list[str]:
    """The names of a record's arrays, in order, without reading the arrays themselves."""
    return [name for name, _, _ in _layout(record)] if is_packed(record) else list(record.keys())


def _unpacked(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A packed record's arrays; a peer's record that its layout does not describe raises ``ValueError``.

    Each array's size is checked against the bytes left before it is copied,
    so a layout cannot make the reader allocate more than the buffer holds.
    """
    layout = _layout(record)
    data = _bytes_of(record, PACKED)
    arrays, offset = {}, 0
    for name, kind, shape in layout:
        size = math.prod(shape) * kind.itemsize
        if size > data.nbytes - offset:
            raise ValueError(f"arrays: '{LAYOUT}' describes more than the {data.nbytes} bytes of '{PACKED}' "
                             f"(at {name!r})")
        arrays[name] = data[offset:offset + size].view(kind).reshape(shape).copy()
        offset += size
    if offset != data.nbytes:
        raise ValueError(f"arrays: '{LAYOUT}' describes {offset} bytes, '{PACKED}' holds {data.nbytes}")
    return arrays


def _layout(record: ArrayRecord) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """A packed record's layout, checked: unique names, numeric dtypes, whole non-negative dimensions."""
    where = f"arrays: '{LAYOUT}'"
    try:
        entries = json.loads(_bytes_of(record, LAYOUT).tobytes().decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{where} is not JSON ({type(exc).__name__})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list of [name, dtype, shape]")
    layout, seen = [], set()
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and isinstance(entry[1], str) and isinstance(entry[2], list)):
            raise ValueError(f"{where} entry {i}: expected [name, dtype, shape]")
        name, dtype, shape = entry
        try:
            kind = np.dtype(dtype)
        except (TypeError, ValueError):
            kind = None
        if kind is None or kind.kind not in _KINDS or kind.fields is not None or kind.subdtype is not None:
            raise ValueError(f"{where} entry {i} ({name!r}): dtype {dtype!r} is not a numeric dtype")
        if not all(type(d) is int and 0 <= d < 2**40 for d in shape):
            raise ValueError(f"{where} entry {i} ({name!r}): shape {shape!r} is not a list of whole sizes")
        if name in seen:
            raise ValueError(f"{where} names {name!r} twice")
        seen.add(name)
        layout.append((name, kind, tuple(shape)))
    return layout


def _bytes_of(record: ArrayRecord, key: str) -> np.ndarray:
    """The packed record's ``key`` array, which must be a flat uint8 array."""
    try:
        value = record[key].numpy()
    except Exception as exc:  # noqa: BLE001 - a peer's bytes; Flower's reader raises many kinds
        raise ValueError(f"arrays: '{key}' is not a numpy array ({type(exc).__name__})") from None
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 1:
        raise ValueError(f"arrays: '{key}' must be a flat uint8 array")
    return value


def pack_instructions(instructions: list[Message]) -> list[Message]:
    """Give each instruction its arrays :func:`packed`, packing each distinct record once.

    Flower's strategies give every instruction the same content (or the same
    arrays): a record already packed through another instruction is left as it is.
    """
    done: dict[int, tuple[ArrayRecord, ArrayRecord]] = {}  # holds the originals: their ids stay theirs
    for message in instructions:
        record = message.content.array_records.get(ARRAYS)
        if record is None or is_packed(record):
            continue
        if id(record) not in done:
            done[id(record)] = (record, packed(record))
        message.content.array_records[ARRAYS] = done[id(record)][1]
    return instructions


def record_bytes(record: ArrayRecord) -> int:
    """Payload bytes of an ``ArrayRecord`` (what it costs on the wire, headers aside)."""
    return sum(len(array.data) for array in record.values())


# --- server -> client ------------------------------------------------------------


def instruction_config(
    round_number: int, label_names: list[str], trial: dict[str, Any] | None = None
) -> ConfigRecord:
    """The ``"config"`` of train and evaluate instructions (strategies add their own keys).

    ``trial``: the config keys a tuning trial sets over the run config.
    """
    config = ConfigRecord({SERVER_ROUND: round_number, LABEL_NAMES: list(label_names)})
    if trial:
        config[TRIAL_CONFIG] = json.dumps(trial, sort_keys=True)
    return config


def run_end_notice(status: str) -> RecordDict:
    """The server's word that the run is over (``status``: completed | failed)."""
    if status not in RUN_STATUSES:
        raise ValueError(f"run-end notice: status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    return RecordDict({CONFIG: ConfigRecord({"status": status})})


def parse_run_end_notice(content: RecordDict) -> str:
    """The status of a run-end notice; ``ValueError`` naming the field otherwise."""
    config = content.config_records.get(CONFIG)
    status = config.get("status") if config is not None else None
    if status not in RUN_STATUSES:
        raise ValueError(f"run-end notice: 'status' must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    return str(status)


@dataclass(frozen=True)
class Instruction:
    """A train or evaluate instruction, as the client reads it."""

    arrays: dict[str, np.ndarray]
    server_round: int
    label_names: list[str]
    proximal_mu: float
    trial: dict[str, Any] = field(default_factory=dict)


def parse_instruction(content: RecordDict) -> Instruction:
    """Check and read an instruction from the server."""
    if ARRAYS not in content.array_records:
        raise ValueError(f"instruction: no '{ARRAYS}' ArrayRecord")
    if CONFIG not in content.config_records:
        raise ValueError(f"instruction: no '{CONFIG}' ConfigRecord")
    config = content.config_records[CONFIG]
    labels = config.get(LABEL_NAMES)
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"instruction: '{LABEL_NAMES}' must list at least 2 label names")
    mu = float(config.get(PROXIMAL_MU, 0.0))
    if not math.isfinite(mu) or mu < 0:
        raise ValueError(f"instruction: '{PROXIMAL_MU}' must be >= 0, got {mu}")
    trial: dict[str, Any] = {}
    if TRIAL_CONFIG in config:
        try:
            trial = json.loads(str(config[TRIAL_CONFIG]))
        except ValueError:
            trial = None  # type: ignore[assignment]
        if not isinstance(trial, dict):
            raise ValueError(f"instruction: '{TRIAL_CONFIG}' must be a JSON object of config keys")
    return Instruction(
        arrays=from_array_record(content.array_records[ARRAYS]),
        server_round=int(config.get(SERVER_ROUND, 0)),
        label_names=list(labels),
        proximal_mu=mu,
        trial=trial,
    )


# --- client -> server ------------------------------------------------------------


def train_reply(
    update: dict[str, np.ndarray], num_examples: int, loss: float, steps: int, seconds: float,
    ray_node: str | None = None,
) -> RecordDict:
    """A client's train reply: its update, how it was obtained, and where (a simulated client's Ray node)."""
    reply = RecordDict(
        {
            ARRAYS: to_array_record(update),
            METRICS: MetricRecord(
                {
                    NUM_EXAMPLES: num_examples,
                    "train-loss": float(loss),
                    "train-steps": steps,
                    "train-seconds": float(seconds),
                }
            ),
        }
    )
    if ray_node:
        reply[PLACEMENT] = ConfigRecord({RAY_NODE: ray_node})
    return reply


def ray_nodes(replies: list[RecordDict]) -> dict[str, int]:
    """How many of these train replies came from each Ray node (replies without a placement left out).

    A placement is a diagnostic, not a contribution: a malformed one is skipped,
    never a reason to refuse the update.
    """
    counts: dict[str, int] = {}
    for content in replies:
        node = content.config_records[PLACEMENT].get(RAY_NODE) if PLACEMENT in content.config_records else None
        if isinstance(node, str) and node:
            counts[node] = counts.get(node, 0) + 1
    return dict(sorted(counts.items()))


def evaluate_reply(metrics: dict, num_examples: int) -> RecordDict:
    """A client's evaluate reply, with its confusion matrix for exact aggregation."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    return RecordDict(
        {
            METRICS: MetricRecord(
                {
                    NUM_EXAMPLES: num_examples,
                    "loss": float(metrics["loss"]),
                    "accuracy": float(metrics["accuracy"]),
                    "confusion": [int(x) for x in cm.ravel()],
                }
            )
        }
    )


@dataclass(frozen=True)
class TrainReply:
    """A checked train reply."""

    update: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]


def parse_train_reply(content: RecordDict, expected: dict[str, np.ndarray]) -> TrainReply:
    """Check a client's update against the arrays it was sent.

    Raises
    ------
    ValueError
        Naming the missing or malformed field: a peer's bad message costs its
        own contribution to the round, never the round.
    """
    if ARRAYS not in content.array_records:
        raise ValueError(f"train reply: no '{ARRAYS}' ArrayRecord")
    metrics = _metrics(content, "train reply")
    update = from_array_record(content.array_records[ARRAYS])
    if set(update) != set(expected):
        odd = sorted(set(update) ^ set(expected))[0]
        raise ValueError(f"train reply: array '{odd}' does not match the trainable parameters")
    for name, value in update.items():
        if value.shape != expected[name].shape:
            raise ValueError(
                f"train reply: array '{name}' has shape {value.shape}, expected {expected[name].shape}"
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"train reply: array '{name}' holds NaN or inf")
    num = _num_examples(metrics, "train reply")
    return TrainReply({k: update[k].astype(np.float32) for k in expected}, num, metrics)


def parse_evaluate_reply(content: RecordDict, num_labels: int) -> tuple[np.ndarray, float, int]:
    """(confusion matrix, loss, num-examples) of a client's evaluate reply."""
    metrics = _metrics(content, "evaluate reply")
    num = _num_examples(metrics, "evaluate reply")
    confusion = np.asarray(metrics.get("confusion", []), dtype=np.int64)
    if confusion.size != num_labels * num_labels or (confusion < 0).any():
        raise ValueError(
            f"evaluate reply: 'confusion' must hold {num_labels * num_labels} counts >= 0"
        )
    if int(confusion.sum()) != num:
        raise ValueError("evaluate reply: 'confusion' does not add up to 'num-examples'")
    loss = float(metrics.get("loss", math.nan))
    if not math.isfinite(loss):
        raise ValueError("evaluate reply: 'loss' must be a finite number")
    return confusion.reshape(num_labels, num_labels), loss, num


def _metrics(content: RecordDict, what: str) -> dict:
    if METRICS not in content.metric_records:
        raise ValueError(f"{what}: no '{METRICS}' MetricRecord")
    return dict(content.metric_records[METRICS])


def _num_examples(metrics: dict, what: str) -> int:
    num = metrics.get(NUM_EXAMPLES)
    if not isinstance(num, (int, float)) or num < 0 or (isinstance(num, float) and not num.is_integer()):
        raise ValueError(f"{what}: '{NUM_EXAMPLES}' must be a whole number >= 0, got {num!r}")
    return int(num)
