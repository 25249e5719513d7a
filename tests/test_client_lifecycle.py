"""A client's lifecycle: the server's end-of-run notice, the ClientApp's journal, the client's lines.

The deployment test (tests/test_deployment.py) checks the same through real
SuperNodes; here the pieces run in-process in seconds: the real ClientApp
behind an in-process grid, with a status file in each node's config as
``fedtext client`` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, RecordDict

from client.journal import STATUS_FILE, JournalReader, RoundReporter
from common.config import FedTextConfig
from common.messages import parse_run_end_notice, run_end_notice
from server.rounds import announce_end, run_federation
from simulations.inprocess import InProcessGrid
from tests.conftest import last_line_of_python

ROOT = Path(__file__).resolve().parents[1]
TINY = FedTextConfig(num_hidden_layers=1, max_length=32, batch_size=8, local_steps=1, freeze="head",
                     clients=3, min_clients=3, rounds=1, max_examples=60, max_test_examples=20)


def _grid_with_journals(cfg: FedTextConfig, folder: Path) -> tuple[InProcessGrid, dict[int, Path]]:
    grid = InProcessGrid(cfg)
    journals = {}
    for node, context in grid.contexts.items():
        journals[node] = folder / f"node-{node}.jsonl"
        context.node_config[STATUS_FILE] = str(journals[node])
    return grid, journals


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_end_notice_round_trips_and_refuses_an_unknown_status() -> None:
    assert parse_run_end_notice(run_end_notice("completed")) == "completed"
    with pytest.raises(ValueError, match="status must be one of completed, failed"):
        run_end_notice("paused")
    with pytest.raises(ValueError, match="'status' must be one of"):
        parse_run_end_notice(RecordDict({"config": ConfigRecord({"status": "over"})}))
    with pytest.raises(ValueError, match="'status' must be one of"):
        parse_run_end_notice(RecordDict())


@pytest.mark.usefixtures("flwr_identity")
def test_every_node_hears_that_the_run_ended(tmp_path: Path) -> None:
    grid, journals = _grid_with_journals(TINY, tmp_path)
    assert announce_end(grid, "completed") == 3
    for node, path in journals.items():
        assert _events(path) == [{"event": "run-end", "run": 1, "status": "completed"}], node


@pytest.mark.usefixtures("flwr_identity")
def test_a_federation_journals_what_each_client_did(tmp_path: Path) -> None:
    cfg = TINY.replace(out=str(tmp_path / "run"))
    grid, journals = _grid_with_journals(cfg, tmp_path)
    run_federation(grid, cfg)
    announce_end(grid, "completed")
    for path in journals.values():
        events = _events(path)
        assert [e["event"] for e in events] == ["train", "sent", "evaluate", "run-end"]
        train, sent, evaluated = events[:3]
        assert train["round"] == 1 and train["steps"] == 1 and train["rows"] > 0
        assert sent["masked"] is True and sent["bytes"] > 0  # SecAgg+: the masked vector went up
        assert evaluated["round"] == 1 and 0.0 <= evaluated["accuracy"] <= 1.0

        reporter = RoundReporter()
        lines = [line for e in events if (line := reporter.line(e))]
        assert lines[0].startswith(f"round 1: trained on {train['rows']} rows (1 steps), loss ")
        assert lines[0].endswith("masked (SecAgg+)")
        assert lines[1].startswith(f"round 1: evaluated the global model on {evaluated['rows']} held-out rows")
        assert lines[2] == "run 1 completed on the server"
        assert reporter.summary() == f"took part in 1 run, 1 training round, {train['rows']:,} rows trained"


@pytest.mark.usefixtures("flwr_identity")
def test_without_secagg_the_upload_is_journaled_as_clear(tmp_path: Path) -> None:
    cfg = TINY.replace(out=str(tmp_path / "run"), secagg=False, fraction_evaluate=0.0)
    grid, journals = _grid_with_journals(cfg, tmp_path)
    run_federation(grid, cfg)
    sent = [e for e in _events(next(iter(journals.values()))) if e["event"] == "sent"]
    assert len(sent) == 1 and sent[0]["masked"] is False and sent[0]["bytes"] > 0
    last = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"][-1]
    assert list(last["phases_s"]) == ["train", "central", "evaluate"]
    assert sum(last["phases_s"].values()) <= last["seconds"]


def test_the_journal_reader_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "status.jsonl"
    reader = JournalReader(path)
    assert reader.new_events() == []  # no file yet
    path.write_text('{"event": "train", "run": 5, "rows": 3}\n{"event": "se')
    assert reader.new_events() == [{"event": "train", "run": 5, "rows": 3}]
    with path.open("a") as f:
        f.write('nt", "run": 5, "bytes": 10, "masked": false}\nnot json\n[1]\n')
    assert reader.new_events() == [{"event": "sent", "run": 5, "bytes": 10, "masked": False}]
    assert reader.new_events() == []


def test_secure_aggregation_exchanges_never_import_torch() -> None:
    # In deployment each SecAgg+ exchange is a fresh flwr-clientapp process that
    # loads client.app: the crypto-only stages must not pay for torch's import.
    code = ("import sys\n"
            "import client.app\n"
            "from flwr.supercore.task_identity import TaskIdentity\n"
            "TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1\n"
            "from tests.test_secagg_mod import run_round\n"
            "run_round({})\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n")
    assert last_line_of_python(code, timeout=120) == "[]"


def test_the_deployment_benchmark_reads_the_clients_own_lines(tmp_path: Path) -> None:
    from simulations.bench_deploy import TRAINED, write_data

    reporter = RoundReporter()
    reporter.line({"event": "train", "run": 3, "round": 2, "rows": 135, "steps": 10, "loss": 0.61, "seconds": 12.3})
    line = "fedtext client: " + reporter.line({"event": "sent", "run": 3, "bytes": 9_000_000, "masked": True})
    assert TRAINED.findall(line) == [("2", "12.3")]

    files, pooled, test = write_data(tmp_path, clients=3, rows=5, test_rows=4, seed=0)
    import pandas as pd

    frame = pd.read_csv(pooled)
    assert frame.groupby("client").size().tolist() == [5, 5, 5]
    for i, path in enumerate(files):  # each deployed client's file is one simulated client's share
        assert pd.read_csv(path)["text"].tolist() == frame[frame["client"] == f"c{i}"]["text"].tolist()
    assert len(pd.read_csv(test)) == 4 and not set(pd.read_csv(test)["text"]) & set(frame["text"])


def test_the_supernode_hears_the_next_message_within_the_cap_not_flowers_3_s(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from flwr.supernode import start_client_internal as loop

    from client.supernode import _CappedTime, cap_idle_waits, poll_seconds
    from common.errors import ConfigError

    monkeypatch.setattr(loop, "time", time)  # undone after the test: other tests see Flower's module
    assert cap_idle_waits(0.05)
    assert isinstance(loop.time, _CappedTime) and loop.time.monotonic() > 0  # the rest of `time` is intact
    started = time.perf_counter()
    loop.time.sleep(3)  # the loop's idle wait after a pull that found nothing
    assert time.perf_counter() - started < 1.0
    # A Flower whose loop no longer uses `time` this way is left alone.
    monkeypatch.setattr(loop, "time", object())
    assert not cap_idle_waits(0.05)
    assert poll_seconds({}) == 0.2 and poll_seconds({"FEDTEXT_SUPERNODE_POLL_S": "1"}) == 1.0
    for bad in ("fast", "0", "10"):
        with pytest.raises(ConfigError, match="FEDTEXT_SUPERNODE_POLL_S"):
            poll_seconds({"FEDTEXT_SUPERNODE_POLL_S": bad})


def test_the_supernode_declares_and_sends_the_heartbeat_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore import heartbeat as sender
    from flwr.supernode import fleet_http_connection as connection

    from client.supernode import heartbeat_seconds, set_heartbeat
    from common.errors import ConfigError

    for module in (sender, connection):  # undone after the test: other tests see Flower's 30 s
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
    assert set_heartbeat(10.0)
    # What the node declares when it activates, and what its sender waits between beats.
    assert connection.HEARTBEAT_DEFAULT_INTERVAL == sender.HEARTBEAT_DEFAULT_INTERVAL == 10.0
    monkeypatch.delattr(sender, "HEARTBEAT_DEFAULT_INTERVAL")
    assert not set_heartbeat(10.0)  # a Flower of another shape is left alone
    assert heartbeat_seconds({}) == 30.0 and heartbeat_seconds({"FEDTEXT_SUPERNODE_HEARTBEAT_S": "10"}) == 10.0
    for bad in ("often", "5", "3600"):
        with pytest.raises(ConfigError, match="FEDTEXT_SUPERNODE_HEARTBEAT_S"):
            heartbeat_seconds({"FEDTEXT_SUPERNODE_HEARTBEAT_S": bad})


def test_the_supernode_module_runs_flowers_entry_point() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "client.supernode", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--superlink" in proc.stdout and "flower-supernode" in proc.stdout, proc.stderr


def test_the_client_stops_its_supernode_once_the_end_of_run_reply_is_sent(capsys: pytest.CaptureFixture) -> None:
    """Not a fixed 4 s after the notice: Flower's SuperNode says when it has sent the acknowledgement."""
    import io

    from client.launch import SuperNodeOutcome, _forward

    lines = [b"\x1b[92mINFO \x1b[0m:      Sending: train message (ID: 1)\n", b"INFO :      Sent successfully\n",
             b"INFO :      Received: query.run_end message (ID: 2)\n"]
    outcome = SuperNodeOutcome()
    _forward(io.BytesIO(b"".join(lines)), outcome)
    assert not outcome.acknowledged  # a train reply sent earlier is not the acknowledgement
    _forward(io.BytesIO(b"INFO :      Sending: query.run_end message (ID: 3)\nINFO :      Sent successfully\n"),
             outcome)
    assert outcome.acknowledged
    assert "\x1b[" not in capsys.readouterr().out  # not a terminal: no colour codes
