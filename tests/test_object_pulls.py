"""Flower's relays hold a pull for an object in transit until it lands (common/object_pulls.py)."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.proto.message_pb2 import PullObjectRequest
from flwr.proto.task_pb2 import Task
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode.nodestate import NodeStateFactory
from flwr.supernode.servicer.runtime import runtime_handlers

from common.object_pulls import hold_pulls_in_transit

RUN = 7
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_transit():
    """A SuperNode's state with a record registered for RUN whose objects have not arrived, and a way to land them."""
    record = ArrayRecord({"w": Array(np.arange(1000, dtype=np.float32))})
    state = NodeStateFactory(ObjectStoreFactory()).state()
    state.object_store.preregister(RUN, get_object_tree(record))
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()}

    def land(after: float) -> threading.Thread:
        def put() -> None:
            time.sleep(after)
            for oid, content in objects.items():
                state.object_store.put(oid, content)
        thread = threading.Thread(target=put, daemon=True)
        thread.start()
        return thread

    return state, record.object_id, objects[record.object_id], land


def pull(handlers: types.ModuleType, state, object_id: str):
    return handlers.pull_object(PullObjectRequest(object_id=object_id), state, Task(run_id=RUN))


def relay(hold_s: float = 5.0, max_held: int = 16) -> types.ModuleType:
    """A module holding Flower's own SuperNode pull handler, made to hold."""
    handlers = types.ModuleType("handlers")
    handlers.pull_object = runtime_handlers.pull_object
    assert hold_pulls_in_transit(handlers, hold_s=hold_s, slots=threading.BoundedSemaphore(max_held))
    return handlers


def test_flower_answers_a_pull_in_transit_with_retry_later(in_transit) -> None:
    state, object_id, _, _ = in_transit
    answer = pull(runtime_handlers, state, object_id)
    assert answer.object_found and not answer.object_available  # the puller then sleeps 1 s, 2 s...


def test_a_held_pull_is_answered_with_the_object_once_it_lands(in_transit) -> None:
    state, object_id, content, land = in_transit
    land(after=0.3)
    answer = pull(relay(), state, object_id)
    assert answer.object_available and answer.object_content == content


def test_an_object_that_does_not_land_is_answered_retry_later_after_the_hold(in_transit) -> None:
    state, object_id, _, _ = in_transit
    answer = pull(relay(hold_s=0.1), state, object_id)
    assert answer.object_found and not answer.object_available  # Flower's back-off takes over


def test_unknown_and_available_objects_are_answered_at_once(in_transit) -> None:
    state, object_id, content, land = in_transit
    handlers = relay(hold_s=60.0)  # a hold would hang the test
    assert not pull(handlers, state, "0" * 64).object_found
    land(after=0.0).join()
    assert pull(handlers, state, object_id).object_content == content


def test_pulls_beyond_the_limit_are_answered_at_once(in_transit) -> None:
    state, object_id, content, land = in_transit
    handlers = relay(hold_s=60.0, max_held=1)
    answers = []
    first = threading.Thread(target=lambda: answers.append(pull(handlers, state, object_id)))
    first.start()
    time.sleep(0.2)  # the first pull now holds the only slot
    second = pull(handlers, state, object_id)
    assert second.object_found and not second.object_available
    land(after=0.0).join()
    first.join(timeout=10)
    assert answers and answers[0].object_content == content


def test_the_relays_hold_their_own_flower_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers as link_runtime

    from client.supernode import hold_object_pulls as supernode_holds
    from server.superlink_process import hold_object_pulls as superlink_holds

    for module in (fleet_handlers, link_runtime, runtime_handlers):  # undone after the test
        monkeypatch.setattr(module, "pull_object", module.pull_object)
    assert supernode_holds() and superlink_holds()
    for module in (fleet_handlers, link_runtime, runtime_handlers):
        assert module.pull_object.holds_in_transit
    assert superlink_holds()  # applying it again keeps one layer
    assert not hasattr(module.pull_object.__wrapped__, "holds_in_transit")
    monkeypatch.delattr(fleet_handlers, "pull_object")
    monkeypatch.setattr(link_runtime, "pull_object", runtime_handlers.pull_object.__wrapped__)
    assert not superlink_holds()  # a Flower of another shape is left alone
    assert not getattr(link_runtime.pull_object, "holds_in_transit", False)


def test_the_superlink_module_runs_flowers_entry_point() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "server.superlink_process", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "flower-superlink" in proc.stdout


def test_a_moved_flower_entry_point_runs_flowers_script_instead() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['superlink_process', '--help']\n"
            "from common.processes import run_flower_entry\n"
            "run_flower_entry('flwr.moved_in_a_later_flower', 'flower_superlink', 'flower-superlink')\n"
            "print('not replaced')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "flower-superlink" in proc.stdout and "not replaced" not in proc.stdout
