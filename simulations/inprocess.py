"""A Grid that delivers messages to fedtext's real ClientApp in this process.

The server's round loop (``server.rounds.run_federation``), the aggregation
(plain or SecAgg+), the strategies, the ClientApp with its secagg mod and the
training code all run as in a simulation; only the transport is replaced: no
SuperLink, no Ray, no processes. Each node keeps its own Context between
messages, as a SuperNode does, and an exception in the ClientApp becomes an
error reply, as Flower's runtime makes it. Tests use it where a real simulation would
cost a minute per configuration (every strategy, every freezing policy), and
``simulations.recipe_sweep`` for the nodes its strategies sample.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from client.app import app as client_app
from common.config import FedTextConfig


@contextlib.contextmanager
def task_identity() -> Iterator[None]:
    """Flower's task identity, which Messages built outside a Flower runtime need; restored after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def run_in_process(cfg: FedTextConfig) -> None:
    """The federation of ``cfg``, server and clients, in this process; its run folder is ``cfg.out``."""
    from server.rounds import run_federation

    with task_identity():
        run_federation(InProcessGrid(cfg), cfg)


class MessageOnlyGrid(Grid):
    """A Grid that only moves messages, which is all fedtext's round loop asks of one.

    Subclasses give ``get_node_ids``, ``push_messages``, ``pull_messages`` and
    ``send_and_receive``; the run-management methods raise.
    """

    def set_run(self, run_id: int) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def get_nodes(self) -> Any:
        raise NotImplementedError


class InProcessGrid(MessageOnlyGrid):
    """``clients`` simulated nodes, partition ids 0..clients-1, answering in turn."""

    def __init__(self, cfg: FedTextConfig) -> None:
        self.nodes = {1000 + pid: pid for pid in range(cfg.clients)}
        run_config = dict(cfg.to_mapping())
        self.contexts = {
            node: Context(run_id=1, node_id=node, state=RecordDict(), run_config=run_config,
                          node_config={"partition-id": pid, "num-partitions": cfg.clients})
            for node, pid in self.nodes.items()
        }
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; its reply waits for a pull."""
        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            # What the SuperLink fills in on delivery.
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_src_node_id"] = 0
            try:
                reply = client_app(message, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - as Flower's runtime: an error reply, not a crash
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=f"{type(exc)}:<'{exc}'>"), reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = node
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))

