"""``fedtext server`` + ``fedtext client`` on localhost: real SuperLink, SuperNodes, TLS, node auth.

One federation covers the deployment paths at once (each Flower message spawns a
fresh ``flwr-clientapp`` that imports torch, so every extra federation costs
minutes on 2 cores):

- a client with a bad data file exits 2 with one line, before any SuperNode starts;
- the server runs with TLS and SuperNode authentication; plain HTTP is refused;
- a client whose key is not registered is refused (Flower exit code 305), retries
  until its ``--join-timeout`` and then says so in one line;
- a client with ``--insecure`` never joins the TLS server;
- updates are securely aggregated (SecAgg+, on by default, advertisements signed
  with the clients' identity keys): client C is SIGKILLed
  (its whole SuperNode tree) while it trains in round 1, the round goes on with the
  clients that answered, and the federation completes with A, B and D (which joins
  after round 1 has started, so that C is surely among its three);
- afterwards no process that any of these commands started is left.

When the run ends, the server tells the clients: A, B and D exit 0 on their own,
with a line per round and a summary.

A second, shorter test stops a ``fedtext server --insecure`` with SIGTERM while it
waits for clients, checks that a client that had joined (``--no-worker``: no warm
worker starts) gives up after its ``--server-timeout`` with one line, and that
everything either started is gone.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from common.processes import command_line, descendants, free_port, is_alive

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-hidden-layers", "1", "--max-length", "32", "--batch-size", "8", "--local-steps", "2",
        "--max-test-examples", "60", "--rounds", "2", "--min-clients", "3", "--fraction-evaluate", "1.0",
        # Only the encoder layer and head travel (2 MB instead of 55 MB per message).
        "--freeze", "embeddings"]
# A killed client holds a round until the SuperLink marks it offline (twice its
# --heartbeat without one) or this timeout; generous so that slow healthy clients
# (a loaded 2-core machine) are never cut off.
ROUND_TIMEOUT = "150"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


class Fedtext:
    """A ``fedtext`` subprocess whose stdout/stderr go to files (never a full pipe)."""

    def __init__(self, name: str, args: list[str], folder: Path) -> None:
        self.name = name
        self.out_path = folder / f"{name}.out"
        self.err_path = folder / f"{name}.err"
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", *args], cwd=ROOT, env=_env(),
            stdout=self.out_path.open("wb"), stderr=self.err_path.open("wb"),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.stdout()):
                return
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited {self.popen.returncode} before {pattern!r}:\n"
                            f"{self.stdout()[-3000:]}\n{self.stderr()[-3000:]}")
            time.sleep(0.5)
        pytest.fail(f"{self.name}: no {pattern!r} within {timeout:.0f}s:\n{self.stdout()[-3000:]}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout:.0f}s:\n{self.stdout()[-3000:]}\n"
                        f"{self.stderr()[-2000:]}")


class Tracker:
    """Remembers every process below the commands it watches (they reparent as they exit)."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def add(self, proc: Fedtext) -> Fedtext:
        self.roots.append(proc.pid)
        self.seen.add(proc.pid)
        return proc

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan()
            time.sleep(0.3)

    def scan(self) -> None:
        for root in list(self.roots):
            self.seen.update(descendants(root))

    def alive(self) -> list[str]:
        return [f"{pid}: {_cmdline(pid)}" for pid in sorted(self.seen) if is_alive(pid)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def kill_all(self) -> None:
        for pid in self.seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    return command_line(pid)[:160] or "?"


def assert_nothing_left(tracker: Tracker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and tracker.alive():
        time.sleep(0.5)
    assert not tracker.alive(), "processes left behind:\n" + "\n".join(tracker.alive())


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for row in rows:
            writer.writerow([row["text"], row["label"]])
    return path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, rt_rows: list[dict[str, str]]) -> dict[str, Path]:
    from deploy.certs import make_certificates

    root = tmp_path_factory.mktemp("deploy")
    make_certificates(root / "certs", ["localhost"], clients=4)
    make_certificates(root / "stranger", ["localhost"], clients=1)  # a key the server never saw
    rows = [r for r in rt_rows if r["label"] in ("fresh", "rotten")]
    data = {f"data{i}": write_rows(root / f"client-{i}.csv", rows[i * 40:(i + 1) * 40]) for i in range(4)}
    bad = root / "bad.csv"
    bad.write_text("text,label\ngood film,fresh\n,rotten\n", encoding="utf-8")  # row 2: empty text
    return {"root": root, "certs": root / "certs", "stranger": root / "stranger", "bad": bad, **data}


def client_args(d: dict[str, Path], port: int, key: Path, data: Path, home: str) -> list[str]:
    # Each client signs its SecAgg keys with its identity (client-<i>.id.key, next to
    # its auth key) and trusts the identities of its federation (identities.json).
    return ["client", "--server", f"127.0.0.1:{port}", "--ca", str(d["certs"] / "ca.crt"),
            "--key", str(key), "--data", str(data), "--home", str(d["root"] / home),
            "--identity", str(key.with_suffix(".id.key")), "--trusted-identities", str(key.parent / "identities.json")]


def _supernode_tree(proc: Fedtext) -> list[int]:
    return descendants(proc.pid)


def _runs_clientapp(proc: Fedtext) -> bool:
    return any("flwr-clientapp" in _cmdline(pid) and is_alive(pid) for pid in _supernode_tree(proc))


def _trains(proc: Fedtext) -> bool:
    """Whether the node's ClientApp is working on a train message (a SecAgg+ stage).

    A ClientApp process alone is not enough: it may be the round's evaluation, or a
    stage that has already replied, and then the kill would not land mid-round.
    """
    received = re.findall(r"Receiving: (\w+) message", proc.stdout())
    return bool(received) and received[-1] == "train" and _runs_clientapp(proc)


@pytest.mark.slow
def test_federation_over_tls_with_node_auth(deployment: dict[str, Path]) -> None:
    d = deployment
    root = d["root"]
    port = free_port()
    out = root / "run"
    keys = d["certs"] / "clients"
    tracker = Tracker()
    procs: list[Fedtext] = []
    try:
        # 1. The server: TLS + node auth, keys of clients 1-4 registered.
        server = tracker.add(Fedtext("server", [
            "server", "--certs", str(d["certs"]), "--authorized-keys", str(keys), "--host", "127.0.0.1",
            "--port", str(port), "--round-timeout", ROUND_TIMEOUT, "--out", str(out), *TINY], root))
        procs.append(server)

        # 2. Meanwhile, a bad data file is refused before any SuperNode starts.
        bad = tracker.add(Fedtext("bad", client_args(d, port, keys / "client-3.key", d["bad"], "h-bad"), root))
        assert bad.wait(120) == 2
        err = bad.stderr().strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedtext: error: ") and "bad.csv" in err[0] \
            and "row 2" in err[0], err
        assert "SuperNode" not in bad.stdout()
        server.wait_for(r"waiting for 3 clients", 240)
        assert "registered 4 SuperNode key(s)" in server.stdout()

        # 3. Plain HTTP to the TLS port gets no answer; HTTPS with the CA does.
        import httpx

        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        import ssl

        tls = ssl.create_default_context(cafile=str(d["certs"] / "ca.crt"))
        assert httpx.get(f"https://127.0.0.1:{port}/health", verify=tls, timeout=5).is_success

        # 4. Clients C, A and B join: round 1 starts with these three (D joins once
        # it has started, for round 2). C's --heartbeat 10 s (Flower's 30 s by
        # default) lets the server drop it 20 s after it dies instead of 60.
        c = tracker.add(Fedtext("c", [*client_args(d, port, keys / "client-3.key", d["data2"], "h-c"),
                                      "--heartbeat", "10"], root))
        procs.append(c)
        # A trains with one thread (--threads), as several clients sharing a machine should.
        a = tracker.add(Fedtext("a", [*client_args(d, port, keys / "client-1.key", d["data0"], "h-a"),
                                      "--threads", "1"], root))
        b = tracker.add(Fedtext("b", client_args(d, port, keys / "client-2.key", d["data1"], "h-b"), root))
        procs += [a, b]

        # 5. An unregistered key is refused (checked below, while the rounds run).
        stranger = tracker.add(Fedtext("stranger", [*client_args(
            d, port, d["stranger"] / "clients" / "client-1.key", d["data2"], "h-stranger"),
            # Long enough for one retry after the first refusal even when starting its
            # SuperNode takes half a minute (CI, with three clients training beside it),
            # and short enough not to outlast the federation by a minute.
            "--join-timeout", "60"], root))

        # 6. A plaintext client cannot join the TLS server (it keeps retrying).
        plain = tracker.add(Fedtext("plain", ["client", "--insecure", "--server", f"127.0.0.1:{port}",
                                              "--data", str(d["data2"]), "--home", str(root / "h-plain")], root))
        procs.append(plain)

        # 7. Kill C's whole SuperNode tree while its ClientApp works on round 1.
        deadline = time.monotonic() + 300
        while not _trains(c):
            assert time.monotonic() < deadline, "client C never received a train instruction"
            assert server.popen.poll() is None, server.stdout()
            time.sleep(0.2)
        for pid in _supernode_tree(c):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        dd = tracker.add(Fedtext("d", client_args(d, port, keys / "client-4.key", d["data3"], "h-d"), root))
        procs.append(dd)
        assert c.wait(90) != 0  # it stops what is left of its tree first; slow on a loaded machine

        # The stranger got Flower's exit code 305, retried until --join-timeout,
        # and ended with one line: the refusal, or, when the federation was over
        # before its last try, the server gone.
        assert stranger.wait(300) != 0
        assert "Failed to activate SuperNode" in stranger.stdout()
        said = [ln for ln in stranger.stderr().splitlines() if ln.startswith("fedtext client:")]
        assert said[0].startswith("fedtext client: the server refused this SuperNode's key; retrying in 5 s"), said
        assert re.match(r"fedtext client: (SuperNode exited with code 305: the server refused"
                        r"|could not reach the server at .* within --join-timeout 60 s)", said[-1]), said

        # 8. The federation completes with A, B and D, every round securely aggregated.
        assert server.wait(600) == 0, server.stdout() + server.stderr()
        doc = json.loads((out / "metrics.json").read_text())
        assert doc["status"] == "completed" and doc["config"]["secagg"] is True
        rounds = [r for r in doc["rounds"] if r["round"] >= 1]
        assert [r["round"] for r in rounds] == [1, 2]
        assert rounds[-1]["clients"]["trained"] == 3, rounds[-1]["clients"]
        # Round 1 lost C mid-round (at whichever SecAgg+ stage the kill landed) and
        # still aggregated the others' masked updates.
        first = rounds[0]["clients"]
        assert first["trained"] >= 2 and any(re.search(r"dropped at stage [0-3]", p)
                                             for p in first.get("problems", [])), first
        trainable = doc["model"]["trainable_params"]
        # Masked updates travel as uint32: 4 bytes per trainable parameter (+ the weight).
        assert 4 * trainable <= rounds[-1]["bytes_up_per_client"] < 4 * trainable + 4096
        assert (out / "model").is_dir() and any((out / "model").iterdir())
        assert "round 2/2" in server.stdout() and "done: central accuracy" in server.stdout()
        assert (out / "run.log").stat().st_size > 0
        # The SuperLink kept its state in memory (an SQLite file cost it most of its CPU).
        assert (out / ".flwr").is_dir() and not list((out / ".flwr").glob("state.db*"))
        assert "SuperNode ID" not in plain.stdout()

        # 9. The server told the clients the run ended: each exits 0 on its own
        #    (goal: within 10 s of the server; slack for a loaded machine), with its
        #    own per-round lines and a summary, and no colour codes in a file.
        server_done = time.monotonic()
        assert "run completed: told 3 of 3 connected clients" in (out / "server.log").read_text()
        for proc in (a, b, dd):
            assert proc.wait(60) == 0, proc.stdout()[-3000:] + proc.stderr()[-2000:]
            out = proc.stdout()  # 36 rows: 40 less the 10% each client holds out for evaluation
            assert re.search(r"fedtext client: round 2: trained on 36 rows \(2 steps\), loss [0-9.]+, "
                             r"[0-9.]+ s; sent [0-9.]+ MB masked \(SecAgg\+\)", out), out[-3000:]
            assert "fedtext client: round 2: evaluated the global model on" in out
            assert re.search(r"fedtext client: done: took part in 1 run, [12] training rounds?, ", out), out[-2000:]
            assert "\x1b[" not in out
        print(f"clients exited {time.monotonic() - server_done:.1f} s after the server")
        journal = [json.loads(line) for line in (root / "h-a" / "status.jsonl").read_text().splitlines()]
        assert {e["threads"] for e in journal if e["event"] == "train"} == {1}, journal
        # They trained in their warm workers, and every message's ClientApp process
        # was forked by their fork servers; both ended with them.
        for home in ("h-a", "h-b", "h-d"):
            assert "trained on 36 rows" in (root / home / "worker.log").read_text()
            assert not (root / home / "worker.sock").exists()
            forked = re.findall(r"flwr-clientapp \d+: exit (-?\d+)", (root / home / "forkserver.log").read_text())
            assert len(forked) >= 5 and forked.count("0") >= 5, forked
            assert not (root / home / "forkserver.sock").exists()

        # 10. A client that never joined stops on SIGTERM, with everything below it.
        plain.popen.send_signal(signal.SIGTERM)
        assert plain.wait(60) != 0
        tracker.scan()
        assert_nothing_left(tracker)
    finally:
        tracker.close()
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=30)
        tracker.kill_all()


@pytest.mark.slow
def test_server_stops_everything_on_sigterm(tmp_path: Path, rt_rows: list[dict[str, str]]) -> None:
    tracker = Tracker()
    port = free_port()
    data = write_rows(tmp_path / "client.csv", rt_rows[:20])
    try:
        server = tracker.add(Fedtext("server", [
            "server", "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--out", str(tmp_path / "run"), *TINY], tmp_path))
        server.wait_for(r"waiting for 3 clients", 240)
        warning = [ln for ln in server.stderr().splitlines() if "--insecure" in ln]
        assert len(warning) == 1 and "warning" in warning[0]
        tracker.scan()
        assert any("server.superlink_process" in _cmdline(pid) for pid in tracker.seen)
        # A client that joined, with a short --server-timeout, gives up with one
        # line once the server is gone.
        # --no-worker: every message would go to Flower's fresh ClientApp process
        # (which trains as a simulated client does); no worker starts.
        client = tracker.add(Fedtext("client", [
            "client", "--insecure", "--server", f"127.0.0.1:{port}", "--data", str(data),
            "--home", str(tmp_path / "h"), "--server-timeout", "10", "--no-worker"], tmp_path))
        client.wait_for(r"SuperNode ID", 120)
        assert "no warm worker" in client.stdout() and not (tmp_path / "h" / "worker.log").exists()
        server.popen.send_signal(signal.SIGTERM)
        assert server.wait(60) != 0
        gone = time.monotonic()
        assert client.wait(60) == 1
        print(f"client gave up {time.monotonic() - gone:.1f} s after the server stopped (--server-timeout 10)")
        said = [ln for ln in client.stderr().splitlines() if ln.startswith("fedtext client:")]
        assert said[-1].startswith(f"fedtext client: the server at 127.0.0.1:{port} has been unreachable "
                                   "for 10 s (--server-timeout); giving up"), said
        assert_nothing_left(tracker)
    finally:
        tracker.close()
        tracker.kill_all()
