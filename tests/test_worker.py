"""A deployed node's warm worker (client/worker.py): the ClientApp hands it train and evaluate.

A real worker process serves the real ClientApp behind the in-process grid, as
``fedtext client`` wires them (node config ``worker`` / ``worker-key``); the
deployment test runs the same through real SuperNodes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import RecordDict

from client.journal import STATUS_FILE
from client.worker import WORKER, WORKER_KEY, WorkerUnavailable, delegate, start_worker
from common.config import FedTextConfig
from common.errors import DataError
from common.messages import ARRAYS, CONFIG, instruction_config, to_array_record
from server.rounds import run_federation
from simulations.inprocess import InProcessGrid
from tests.conftest import last_line_of_python

ROOT = Path(__file__).resolve().parents[1]
TINY = FedTextConfig(num_hidden_layers=1, max_length=32, batch_size=8, local_steps=2, min_local_steps=0,
                     freeze="head", clients=3, min_clients=3, rounds=1, max_examples=60, max_test_examples=20)


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[Path, Path, Path]]:
    """A worker as ``fedtext client`` starts it: (socket, key file, its log)."""
    # A short folder: a Unix socket's path is limited to 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="ftw-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    running = start_worker(home, env)
    try:
        yield running.server.socket, running.key_file, home / "worker.log"
    finally:
        running.stop()
    assert running.server.process.poll() is not None
    assert not running.server.socket.exists()


def _journals(grid: InProcessGrid, folder: Path, worker: tuple[Path, Path, Path] | None) -> dict[int, Path]:
    folder.mkdir()
    journals = {}
    for node, context in grid.contexts.items():
        journals[node] = folder / f"node-{node}.jsonl"
        context.node_config[STATUS_FILE] = str(journals[node])
        if worker is not None:
            context.node_config[WORKER] = str(worker[0])
            context.node_config[WORKER_KEY] = str(worker[1])
    return journals


def _trained(path: Path) -> dict:
    return next(e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "train")


def _wait_for(path: Path, text: str, count: int, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while (log := path.read_text()).count(text) < count:
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.1)
    return log


@pytest.mark.usefixtures("flwr_identity")
def test_a_federation_trains_in_the_nodes_worker_as_it_would_in_the_clientapp(
    tmp_path: Path, worker: tuple[Path, Path, Path]
) -> None:
    before = worker[2].read_text().count("trained on")
    cold = TINY.replace(out=str(tmp_path / "cold"))
    cold_grid = InProcessGrid(cold)
    cold_journals = _journals(cold_grid, tmp_path / "cold-journals", None)
    run_federation(cold_grid, cold)

    warm = TINY.replace(out=str(tmp_path / "warm"))
    grid = InProcessGrid(warm)
    journals = _journals(grid, tmp_path / "warm-journals", worker)
    # The last node's worker is gone: it works in the ClientApp process instead.
    last = max(grid.contexts)
    grid.contexts[last].node_config[WORKER] = str(tmp_path / "nobody.sock")
    run_federation(grid, warm)

    # The two live-worker nodes trained and evaluated in the worker, the third here.
    log = _wait_for(worker[2], "trained on", before + 2)
    assert log.count("trained on") == before + 2, log[-2000:]
    for node, path in journals.items():
        events = [e["event"] for e in map(json.loads, path.read_text().splitlines())]
        assert events == ["train", "sent", "evaluate"], (node, events)
        # Same rows, seed and weights: the same training wherever it ran.
        warm_run, cold_run = _trained(path), _trained(cold_journals[node])
        assert warm_run["rows"] == cold_run["rows"] and warm_run["steps"] == cold_run["steps"] == 2
        assert warm_run["loss"] == pytest.approx(cold_run["loss"], rel=1e-4)
    metrics = json.loads((tmp_path / "warm" / "metrics.json").read_text())
    last = metrics["rounds"][-1]
    assert last["clients"]["trained"] == 3
    # Where the round's time went: each SecAgg+ exchange, the unmasking, the evaluations.
    phases = last["phases_s"]
    assert list(phases) == ["stage 0", "stage 1", "stage 2 (train)", "stage 3", "unmask", "central", "evaluate"]
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= last["seconds"]


@pytest.mark.usefixtures("flwr_identity")
def test_the_workers_errors_come_back_as_their_own_class(tmp_path: Path, worker: tuple[Path, Path, Path]) -> None:
    from flwr.app import Context

    content = RecordDict({ARRAYS: to_array_record({}), CONFIG: instruction_config(1, ["neg", "pos"])})
    missing = tmp_path / "missing.csv"
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config=dict(TINY.to_mapping()),
                      node_config={"data-path": str(missing), WORKER: str(worker[0]), WORKER_KEY: str(worker[1])})
    with pytest.raises(DataError, match="missing.csv"):
        delegate("train", content, context)

    # A peer without the key is refused, and the worker goes on serving.
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"x" * 32)
    with pytest.raises(WorkerUnavailable):
        delegate("train", content, Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                                           node_config={WORKER: str(worker[0]), WORKER_KEY: str(wrong)}))
    with pytest.raises(RuntimeError, match="unknown op 'predict'"):
        delegate("predict", content, context)

    # A ClientApp that goes away before its answer (killed, timed out) does not
    # take the worker down: the next one is served.
    from multiprocessing.connection import Client

    from flwr.common.serde import context_to_proto, recorddict_to_proto

    for _ in range(3):
        with Client(str(worker[0]), family="AF_UNIX", authkey=worker[1].read_bytes()) as gone:
            gone.send_bytes(json.dumps({"op": "train"}).encode())
            gone.send_bytes(recorddict_to_proto(content).SerializeToString())
            gone.send_bytes(context_to_proto(context).SerializeToString())
    with pytest.raises(DataError, match="missing.csv"):
        delegate("train", content, context)


@pytest.mark.usefixtures("flwr_identity")
def test_a_worker_running_other_fedtext_code_refuses_and_the_clientapp_works_itself(
    tmp_path: Path, worker: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.app import Context

    import client.worker

    content = RecordDict({ARRAYS: to_array_record({}), CONFIG: instruction_config(1, ["neg", "pos"])})
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config=dict(TINY.to_mapping()),
                      node_config={"data-path": str(tmp_path / "missing.csv"), WORKER: str(worker[0]),
                                   WORKER_KEY: str(worker[1])})
    # The server's app (this ClientApp's code) and the node's install differ.
    monkeypatch.setattr(client.worker, "code_fingerprint", lambda: "0" * 16)
    with pytest.raises(WorkerUnavailable, match="other fedtext code .* than this run's app"):
        delegate("train", content, context)
    from client.app import _carry_out

    with pytest.raises(DataError, match="missing.csv"):  # done here, in the ClientApp's process
        _carry_out("train", content, context)
    assert "refused train: the node's worker runs other fedtext code" in _wait_for(worker[2], "refused train", 1)
    monkeypatch.undo()
    with pytest.raises(DataError, match="missing.csv"):  # the same code again: the worker works
        delegate("train", content, context)


def test_a_train_message_handed_to_the_worker_never_imports_torch_in_the_clientapp(
    tmp_path: Path, worker: tuple[Path, Path, Path]
) -> None:
    # In deployment the ClientApp is a fresh process per message: with a worker,
    # a train message costs it Flower and the crypto only.
    from server.global_model import GlobalModel

    labels = ["fresh", "rotten"]
    content = RecordDict({ARRAYS: GlobalModel(TINY, labels).arrays(), CONFIG: instruction_config(1, labels)})
    from flwr.common.serde import recorddict_to_proto

    (tmp_path / "content.pb").write_bytes(recorddict_to_proto(content).SerializeToString())
    node_config = {"partition-id": 0, "num-partitions": 3, WORKER: str(worker[0]), WORKER_KEY: str(worker[1])}
    code = (
        "import json, sys\n"
        "from flwr.app import Context, RecordDict\n"
        "from flwr.common.serde import recorddict_from_proto\n"
        "from flwr.proto.recorddict_pb2 import RecordDict as Proto\n"
        "from flwr.supercore.task_identity import TaskIdentity\n"
        "TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1\n"
        "import client.app\n"
        "from tests.conftest import received_message\n"
        f"content = recorddict_from_proto(Proto.FromString(open({str(tmp_path / 'content.pb')!r}, 'rb').read()))\n"
        f"context = Context(run_id=1, node_id=5, state=RecordDict(), run_config={dict(TINY.replace(out=str(tmp_path / 'run')).to_mapping())!r}, "
        f"node_config={node_config!r})\n"
        "reply = client.app.app(received_message(content, 'train', 5), context)\n"
        "assert not reply.has_error(), reply.error\n"
        "print(json.dumps({'steps': reply.content.metric_records['metrics']['train-steps'],\n"
        "                  'heavy': sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)}))\n"
    )
    said = json.loads(last_line_of_python(code))
    assert said == {"steps": 2, "heavy": []}, said
