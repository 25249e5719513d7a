"""A deployed node's ClientApp fork server (client/forkserver.py): the launcher the SuperExec runs.

A real fork server and the launcher script ``fedtext client`` installs, run as
the SuperExec runs ``flwr-clientapp``; the deployment test runs whole rounds
through them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.forkserver import LAUNCHER_NAME, install_launcher, start_forkserver

ROOT = Path(__file__).resolve().parents[1]
REAL = str(Path(sys.executable).parent / LAUNCHER_NAME)


def _short_home() -> Path:
    # A Unix socket's path is limited to 108 bytes: pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="ftf-"))


@pytest.fixture(scope="module")
def flower_forks() -> Iterator[Path]:
    """The launcher of a fork server that runs Flower's own flwr-clientapp, as ``fedtext client`` starts it."""
    home = _short_home()
    server = start_forkserver(home, {**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield server.bin_dir / LAUNCHER_NAME
    finally:
        server.stop()
    assert server.server.process.poll() is not None
    assert not server.server.socket.exists()


def test_the_launcher_runs_flowers_clientapp_in_a_forked_child_with_its_exit_status(flower_forks: Path) -> None:
    forked = subprocess.run([str(flower_forks), "--help"], capture_output=True, text=True, timeout=60)
    cold = subprocess.run([REAL, "--help"], capture_output=True, text=True, timeout=60)
    assert forked.returncode == cold.returncode == 0
    assert forked.stdout == cold.stdout
    assert "usage: flwr-clientapp" in forked.stdout
    bad = subprocess.run([str(flower_forks), "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "flwr-clientapp: error:" in bad.stderr
    log = (flower_forks.parents[1] / "forkserver.log").read_text()
    assert "exit 0 after" in log and "exit 2 after" in log


def test_a_malformed_request_is_refused_and_the_server_goes_on(flower_forks: Path) -> None:
    import socket
    import struct

    path = flower_forks.parents[1] / "forkserver.sock"
    for body in (b"[1, 2]", b"not json", b'{"argv": "x", "env": {}}'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(path))
            socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
            assert conn.recv(100) == b""  # closed without a child
    done = subprocess.run([str(flower_forks), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: flwr-clientapp" in done.stdout
    log = (flower_forks.parents[1] / "forkserver.log").read_text()
    assert log.count("request refused") == 3


# The child runs this instead of Flower's entry point: it reports what a
# ClientApp process would start from.
PROBE_SERVER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import client.forkserver as forkserver

    def probe():
        if sys.argv[1:] == ["sleep"]:
            time.sleep(60)
        print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("PROBE_VALUE"),
                          "fedtext": sorted(m for m in sys.modules if m.split(".")[0] in ("client", "common")),
                          "flower": "flwr.supernode.cli" in sys.modules, "pid": os.getpid(),
                          "parent": os.getppid()}))
        sys.exit(int(os.environ.get("PROBE_EXIT", "0")))

    forkserver.ENTRY = ("__main__", "probe")
    forkserver.main()
""")


@pytest.fixture(scope="module")
def probe_forks() -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    home = _short_home()
    path = home / "forkserver.sock"
    server = subprocess.Popen([sys.executable, "-c", PROBE_SERVER, "--socket", str(path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not path.exists():
        assert server.poll() is None and time.monotonic() < deadline, "the fork server did not start"
        time.sleep(0.05)
    try:
        yield install_launcher(home, path, sys.executable, REAL) / LAUNCHER_NAME, server
    finally:
        server.kill()
        server.wait()


def test_a_child_starts_with_flower_imported_but_none_of_fedtexts_modules_and_the_launchers_world(
        probe_forks: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    launcher, server = probe_forks
    env = {**os.environ, "PROBE_VALUE": "from the launcher", "PROBE_EXIT": "3"}
    done = subprocess.run([str(launcher), "--token", "t", "a b"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert done.returncode == 3, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == [LAUNCHER_NAME, "--token", "t", "a b"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["env"] == "from the launcher"
    # The server imported client.forkserver (and client); the ClientApp must load
    # the app the server sent, from its FAB, so the child starts without them.
    assert seen["fedtext"] == []
    assert seen["flower"] is True
    assert seen["parent"] == server.pid


def test_a_signal_to_the_launcher_reaches_its_child(probe_forks: tuple[Path, subprocess.Popen[bytes]]) -> None:
    launcher, _ = probe_forks
    running = subprocess.Popen([str(launcher), "sleep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=30) == -signal.SIGTERM


def test_without_a_fork_server_the_launcher_runs_flowers_clientapp_cold() -> None:
    home = _short_home()
    launcher = install_launcher(home, home / "forkserver.sock", sys.executable, REAL) / LAUNCHER_NAME
    done = subprocess.run([str(launcher), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "usage: flwr-clientapp" in done.stdout
