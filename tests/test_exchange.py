"""server/exchange.py: push the instructions, pull the replies as they arrive, give up at the timeout."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Message, RecordDict

from server import exchange as exchange_module
from server.exchange import exchange
from simulations.inprocess import MessageOnlyGrid
from tests.conftest import received_message


class SlowGrid(MessageOnlyGrid):
    """Node n's reply becomes available at its n-th pull; nodes in ``silent`` never answer."""

    def __init__(self, silent: Iterable[int] = ()) -> None:
        self.silent = set(silent)
        self.pulls = 0
        self.pending: dict[str, tuple[int, Message]] = {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            incoming = received_message(message.content, "train", node)
            incoming.metadata.__dict__["_message_id"] = f"m{node}"
            reply = Message(RecordDict(), reply_to=incoming)
            reply.metadata.__dict__["_src_node_id"] = node
            if node not in self.silent:
                self.pending[f"m{node}"] = (node, reply)
            ids.append(f"m{node}")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        ready = [i for i in message_ids if i in self.pending and self.pending[i][0] <= self.pulls]
        return [self.pending.pop(i)[1] for i in ready]

    def get_node_ids(self) -> Iterable[int]:
        return [1, 2, 3]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise AssertionError("exchange must not wait at the grid's own pull interval")


def _instructions() -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type="train") for node in (1, 2, 3)]


@pytest.mark.usefixtures("flwr_identity")
def test_replies_are_collected_as_they_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange_module, "POLL_S", 0.001)
    grid = SlowGrid()
    replies = exchange(grid, _instructions(), timeout=None)
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    assert grid.pulls == 3  # stopped at the pull that brought the last reply


@pytest.mark.usefixtures("flwr_identity")
def test_a_silent_node_is_left_out_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange_module, "POLL_S", 0.001)
    grid = SlowGrid(silent=[2])
    replies = exchange(grid, _instructions(), timeout=0.05)
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 3]
    assert grid.pulls > 3  # it kept pulling until the timeout


@pytest.mark.usefixtures("flwr_identity")
def test_each_reply_is_handed_over_before_the_next_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    """SecAgg+'s stage 2 folds each masked vector into the sum as it comes, holding one, not one per client."""
    from server.exchange import replies_as_they_arrive

    monkeypatch.setattr(exchange_module, "POLL_S", 0.001)
    grid = SlowGrid()
    seen = [(reply.metadata.src_node_id, grid.pulls) for reply in replies_as_they_arrive(grid, _instructions(), None)]
    assert seen == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.usefixtures("flwr_identity")
def test_send_pushes_at_once_and_collects_later(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.exchange import send

    monkeypatch.setattr(exchange_module, "POLL_S", 0.001)
    grid = SlowGrid(silent=[3])
    in_flight = send(grid, _instructions(), timeout=0.05)
    assert sorted(grid.pending) == ["m1", "m2"] and grid.pulls == 0  # pushed, nothing pulled yet
    assert in_flight.asked == 3
    assert sorted(r.metadata.src_node_id for r in in_flight.replies()) == [1, 2]


@pytest.mark.usefixtures("flwr_identity")
def test_clients_evaluate_while_the_server_evaluates_centrally(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The round pushes the evaluation instructions before its central evaluation and collects them after."""
    from common.config import FedTextConfig
    from server import rounds
    from server.global_model import GlobalModel
    from simulations.inprocess import InProcessGrid

    events: list[str] = []

    class RecordingGrid(InProcessGrid):
        def push_messages(self, messages):  # noqa: ANN001, ANN202
            messages = list(messages)
            events.extend(f"push {m.metadata.message_type}" for m in messages[:1])
            return super().push_messages(messages)

        def pull_messages(self, message_ids):  # noqa: ANN001, ANN202
            replies = list(super().pull_messages(message_ids))
            events.extend(f"pull {m.metadata.message_type}" for m in replies[:1])
            return replies

    central = GlobalModel.evaluate

    def evaluate(self, test):  # noqa: ANN001, ANN202
        events.append("central")
        return central(self, test)

    monkeypatch.setattr(GlobalModel, "evaluate", evaluate)
    cfg = FedTextConfig(num_hidden_layers=1, max_length=32, batch_size=8, local_steps=1, freeze="head", clients=2,
                        min_clients=2, rounds=1, max_examples=40, max_test_examples=20, secagg=False,
                        out=str(tmp_path / "run"))
    rounds.run_federation(RecordingGrid(cfg), cfg)
    assert events == ["central", "push train", "pull train", "push evaluate", "central", "pull evaluate"]
