"""From the clients' updates to one aggregate the strategy can consume.

A round's aggregation has two halves:

1. **collect** (:class:`PlainAggregation` here; the secure one masks updates so the
   server sees only their sum): send the train instructions, gather the
   updates, and return :class:`RoundUpdate`, the example-weighted mean update
   ``sum_i n_i u_i / sum_i n_i`` and the total weight ``sum_i n_i``;
2. **apply** (:func:`apply_update`): hand that aggregate to the configured Flower
   strategy as a single reply carrying ``current + mean update``.

Why one synthetic reply: every strategy in scope first takes the
example-weighted average of its replies' arrays (FedAvg's step), then applies
its server optimizer to ``average - current``. The average of one reply is the
reply itself, and ``(current + mean update) - current`` is the mean update, so
FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad and FedAvgM compute exactly their
textbook update while seeing only the aggregate (tests/test_strategy_maths.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.messages import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    from_array_record,
    parse_train_reply,
    ray_nodes,
    record_bytes,
    to_array_record,
)
from server.exchange import exchange

log = logging.getLogger("fedtext.server")


@dataclass
class RoundUpdate:
    """The aggregate of one training round.

    Attributes
    ----------
    mean_update : dict[str, np.ndarray]
        Example-weighted mean of the clients' updates.
    total_examples : int
        Sum of the contributing clients' example counts.
    num_clients : int
        Clients whose update is in the aggregate.
    train_metrics : dict[str, float]
        Means of the clients' training metrics over clients (see :func:`client_mean_metrics`).
    bytes_up, bytes_down : int
        Payload bytes received from / sent to clients this round.
    problems : list[str]
        One line per client left out of the aggregate, and why.
    phases : dict[str, float]
        Seconds of each exchange of the round ("train", or the four SecAgg+
        stages), from sending to the last reply: where a round's time goes.
    ray_nodes : dict[str, int]
        Clients that trained, per Ray node (simulations; empty in deployment).
    """

    mean_update: dict[str, np.ndarray]
    total_examples: int
    num_clients: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    problems: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    ray_nodes: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No client's update is in it: the global model stays as it was."""
        return self.num_clients == 0

    def discarded(self, why: str) -> RoundUpdate:
        """This round with its aggregate thrown away (traffic and problems kept, ``why`` added)."""
        return RoundUpdate({}, 0, 0, {}, self.bytes_up, self.bytes_down, [*self.problems, why], self.phases,
                           self.ray_nodes)


# The phase of a round's ``phases_s`` in which clients train: plain, or SecAgg+'s stage 2.
# A centralized round names its training as a plain one does; benchmarks read these names.
TRAIN_PHASE = "train"
SECURE_TRAIN_PHASE = "stage 2 (train)"


class Laps:
    """Seconds of consecutive steps of a round, each timed from the end of the one before."""

    def __init__(self, phases: dict[str, float] | None = None) -> None:
        self.phases = dict(phases or {})
        self._since = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self._since, 3)
        self._since = now


class Aggregation(Protocol):
    """How a round's updates travel and are combined (plain or secure)."""

    def collect(
        self,
        grid: Grid,
        instructions: list[Message],
        current: dict[str, np.ndarray],
        timeout: float | None,
    ) -> RoundUpdate:
        """Send ``instructions``, return the aggregate (``empty`` if nobody contributed)."""
        ...


# The privacy a round spent is the worst any client spent, not the average.
_WORST_OF = {"dp-epsilon": max, "dp-noise-multiplier": min}


def client_mean_metrics(metrics: list[dict]) -> dict[str, float]:
    """Mean over clients of the numeric metrics all of them reported.

    Unweighted in both paths: under secure aggregation the example counts stay
    under the mask, so the server cannot weigh them, and a run with and without
    SecAgg must report the same quantities (mean train loss, mean steps).
    Record-level DP's epsilon is the largest reported (and the noise the smallest).
    """
    if not metrics:
        return {}
    keys = set.intersection(*(set(m) for m in metrics)) - {NUM_EXAMPLES}
    return {
        k: float(_WORST_OF.get(k, np.mean)([float(m[k]) for m in metrics]))
        for k in sorted(keys)
        if all(isinstance(m[k], (int, float)) for m in metrics)
    }


class PlainAggregation:
    """Updates sent in the clear (``--no-secagg``) and averaged by example count."""

    def collect(
        self,
        grid: Grid,
        instructions: list[Message],
        current: dict[str, np.ndarray],
        timeout: float | None,
    ) -> RoundUpdate:
        """Send the train instructions and average the valid updates."""
        bytes_down = sum(record_bytes(m.content.array_records[ARRAYS]) for m in instructions)
        laps = Laps()
        replies = exchange(grid, instructions, timeout)
        laps.lap(TRAIN_PHASE)
        problems = [f"node {node}: no reply" for node in _silent_nodes(instructions, replies)]
        total = 0
        summed = {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}
        metrics, weights, bytes_up, valid = [], [], 0, []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                problems.append(f"node {node}: {reply.error.reason}")
                continue
            try:
                parsed = parse_train_reply(reply.content, current)
            except ValueError as exc:
                problems.append(f"node {node}: {exc}")
                continue
            bytes_up += record_bytes(reply.content.array_records[ARRAYS])
            for k, u in parsed.update.items():
                summed[k] += parsed.num_examples * u.astype(np.float64)
            total += parsed.num_examples
            metrics.append(parsed.metrics)
            weights.append(parsed.num_examples)
            valid.append(reply.content)
        for line in problems:
            log.warning("round update left out: %s", line)
        if total == 0:
            return RoundUpdate({}, 0, 0, {}, bytes_up, bytes_down, problems, laps.phases)
        mean = {k: (s / total).astype(np.float32) for k, s in summed.items()}
        return RoundUpdate(
            mean, total, len(weights), client_mean_metrics(metrics),
            bytes_up, bytes_down, problems, laps.phases, ray_nodes(valid),
        )


def _silent_nodes(instructions: Iterable[Message], replies: list[Message]) -> list[int]:
    answered = {r.metadata.src_node_id for r in replies}
    return [m.metadata.dst_node_id for m in instructions if m.metadata.dst_node_id not in answered]


def apply_update(
    strategy: Strategy, server_round: int, current: ArrayRecord, update: RoundUpdate
) -> ArrayRecord:
    """Let the strategy turn the round's aggregate into the next global arrays."""
    arrays = from_array_record(current)
    aggregate = {k: arrays[k] + update.mean_update[k] for k in arrays}
    reply = Message(
        content=RecordDict(
            {
                ARRAYS: to_array_record(aggregate),
                METRICS: MetricRecord({NUM_EXAMPLES: update.total_examples}),
            }
        ),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )
    new_arrays, _ = strategy.aggregate_train(server_round, [reply])
    if new_arrays is None:
        raise RuntimeError(f"strategy {type(strategy).__name__} returned no arrays")
    # Flower's optimizers return float64 for float32 inputs; keep the wire at 4 bytes.
    return to_array_record({k: v.astype(np.float32) for k, v in from_array_record(new_arrays).items()})
