"""Server half of secure aggregation: the server learns only the sum of the updates.

:class:`SecureAggregation` is an :class:`~server.aggregation.Aggregation`, so the
round loop and the strategies are the same as in the clear. It drives the four
SecAgg+ stages (``common.secagg``) over Flower's Message API:

=======  ================================================================
stage 0  the stage-0 request; clients answer with public keys
stage 1  relay each client's neighbours' keys; collect encrypted shares
stage 2  relay the shares with the strategy's train instructions; clients
         train and answer with their **masked** update (uint32, 4 B/param)
stage 3  tell each client who survived; collect the shares that unmask the sum
=======  ================================================================

Training rides on stage 2, as in Flower's SecAgg+ workflow: a client masks
its update as soon as it has one, so no update waits in a node's state
between exchanges (client/secagg_mod.py says what that saved).

``SecAggServer.finish`` returns the example-weighted mean of the survivors'
updates and their total weight, which is all the strategy ever sees. A client
lost at any stage is left out of the sum as long as enough remain; every stage
waits at most its timeout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.config import FedTextConfig, secagg_params
from common.messages import ARRAYS, METRICS, SECAGG, ray_nodes, record_bytes
from common.messages import SECAGG_MASKED as MASKED
from common.secagg import SecAggError, SecAggServer
from server.aggregation import SECURE_TRAIN_PHASE, Laps, RoundUpdate, client_mean_metrics
from server.exchange import replies_as_they_arrive

log = logging.getLogger("fedtext.server")


class SecureAggregation:
    """Updates masked with SecAgg+; the server unmasks only their sum.

    Parameters
    ----------
    cfg : FedTextConfig
        ``secagg-*`` keys (neighbours, threshold, clip, bits, max weight,
        stage timeout) and ``round-timeout`` (waiting for training).
    """

    def __init__(self, cfg: FedTextConfig) -> None:
        self.params = secagg_params(cfg)

    def collect(
        self,
        grid: Grid,
        instructions: list[Message],
        current: dict[str, np.ndarray],
        timeout: float | None,
    ) -> RoundUpdate:
        """Run one SecAgg+ round over the nodes the strategy sampled."""
        if not instructions:
            return RoundUpdate({}, 0, 0)
        nodes = [m.metadata.dst_node_id for m in instructions]
        self.params.validate(len(nodes))
        # m quantized values + the weight: the server checks every masked vector's length.
        length = sum(a.size for a in current.values()) + 1
        server = SecAggServer(self.params, round_id=os.urandom(16), vector_length=length)
        traffic = _Traffic()
        problems: list[str] = []
        laps = Laps()
        try:
            answers = _answers(self._valid_replies(grid, instructions, server.stage0_requests(nodes),
                                                   self.params.stage_timeout_s, traffic, problems))
            laps.lap("stage 0")
            answers = _answers(self._valid_replies(grid, instructions, server.stage1_requests(answers),
                                                   self.params.stage_timeout_s, traffic, problems))
            laps.lap("stage 1")
            # Stage 2 carries the train instruction: its wait covers training.
            # Each masked vector joins the running sum as it arrives, so the
            # server holds one update-sized vector, not one per client.
            train_metrics, kept = [], []
            for node, reply in self._valid_replies(grid, instructions, server.stage2_requests(answers), timeout,
                                                   traffic, problems, train=True):
                server.add_masked(node, _answer(reply, with_masked=True))
                if METRICS in reply.content.metric_records:
                    train_metrics.append(dict(reply.content.metric_records[METRICS]))
                kept.append(reply.content)  # without its masked vector: the placement record
            laps.lap(SECURE_TRAIN_PHASE)
            placed = ray_nodes(kept)
            answers = _answers(self._valid_replies(grid, instructions, server.stage3_requests(),
                                                   self.params.stage_timeout_s, traffic, problems))
            laps.lap("stage 3")
            result = server.finish(answers)
            laps.lap("unmask")
        except SecAggError as exc:
            problems.append(f"secure aggregation failed: {exc}")
            for line in problems:
                log.warning("round update left out: %s", line)
            return RoundUpdate({}, 0, 0, {}, traffic.up, traffic.down, problems, laps.phases)
        problems += [f"node {n}: dropped at stage {s}" for n, s in sorted(server.dropped.items())]
        problems += [f"node {n}: {why}" for n, why in sorted(server.rejected.items())]
        for line in problems:
            log.warning("secure aggregation: %s", line)
        return RoundUpdate(
            mean_update=_unflatten(result.mean_update, current),
            total_examples=int(result.total_weight),
            num_clients=len(result.survivors),
            train_metrics=client_mean_metrics(train_metrics),
            bytes_up=traffic.up,
            bytes_down=traffic.down,
            problems=problems,
            phases=laps.phases,
            ray_nodes=placed,
        )

    def _valid_replies(
        self,
        grid: Grid,
        instructions: list[Message],
        requests: Mapping[int, Mapping[str, Any]],
        timeout: float | None,
        traffic: _Traffic,
        problems: list[str],
        train: bool = False,
    ) -> Iterator[tuple[int, Message]]:
        """Send one stage's requests; yield each valid reply, with its node, as it arrives."""
        by_node = {m.metadata.dst_node_id: m for m in instructions}
        messages = []
        for node, request in requests.items():
            content = RecordDict({SECAGG: ConfigRecord(dict(request))})
            if train:  # the strategy's instruction (arrays + config) rides along
                for key, record in by_node[node].content.items():
                    content[key] = record
                traffic.down += record_bytes(by_node[node].content.array_records[ARRAYS])
            traffic.down += _config_bytes(request)
            messages.append(Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN))
        for reply in replies_as_they_arrive(grid, messages, timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                problems.append(f"node {node}: {reply.error.reason}")
            elif SECAGG not in reply.content.config_records:
                problems.append(f"node {node}: reply without a '{SECAGG}' record")
            else:
                traffic.up += _config_bytes(reply.content.config_records[SECAGG])
                if MASKED in reply.content.array_records:
                    traffic.up += record_bytes(reply.content.array_records[MASKED])
                yield node, reply


class _Traffic:
    """Payload bytes each way over a round."""

    def __init__(self) -> None:
        self.up = 0
        self.down = 0


def _answers(replies: Iterable[tuple[int, Message]]) -> dict[int, dict[str, Any]]:
    return {node: _answer(reply) for node, reply in replies}


def _answer(reply: Message, with_masked: bool = False) -> dict[str, Any]:
    """A reply's SecAgg+ record as the protocol reads it; with its masked vector, taken out of the reply."""
    answer = dict(reply.content.config_records[SECAGG])
    if with_masked and MASKED in reply.content.array_records:
        answer["masked"] = reply.content.array_records[MASKED]["masked"].numpy()
        del reply.content[MASKED]  # its bytes are decoded: one copy at a time, not two
    return answer


def _config_bytes(values: Mapping[str, Any]) -> int:
    total = 0
    for v in values.values():
        items = v if isinstance(v, list) else [v]
        total += sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in items)
    return total


def _unflatten(flat: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split the aggregate back into named arrays, in the instruction's order."""
    expected = sum(a.size for a in like.values())
    if flat.size != expected:
        raise SecAggError(f"aggregate has {flat.size} values, expected {expected}")
    out, start = {}, 0
    for name, array in like.items():
        out[name] = flat[start : start + array.size].reshape(array.shape).astype(np.float32)
        start += array.size
    return out
