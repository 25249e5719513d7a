"""A deployed node's ClientApp processes, forked from a parent that has Flower imported.

In deployment Flower's SuperExec starts a fresh ``flwr-clientapp`` process for
every message the node receives: five a round under SecAgg+ (four exchanges and
the evaluation). Its entry point imports Flower's SuperNode CLI, SQLAlchemy,
Alembic and FastAPI before it does anything: 2.1 s on an idle core of this
machine, 2.4-3.9 s with three nodes on two cores, out of the 3-5 s an exchange
takes end to end (the message's own work, from pulling it to pushing the reply,
is 0.1-0.6 s; docs/BENCHMARKS.md, "Deployment rounds against simulated rounds").

``fedtext client`` therefore starts one fork server per node (:func:`serve`,
``python -m client.forkserver``), which imports what every ClientApp process
imports and then waits. Per message:

1. the SuperExec runs ``flwr-clientapp ARGS`` as usual, found on its ``PATH``;
   fedtext puts a launcher of that name first there (:func:`install_launcher`);
2. the launcher (the standard library only, started with ``python -IS``: tens
   of milliseconds) connects to the fork server's Unix socket and sends its
   arguments, working directory, environment and its stdin/stdout/stderr;
3. the fork server forks. The child drops every fedtext module the server had
   loaded (the ClientApp must load the app the server sent, from its FAB),
   takes the launcher's environment and output, and runs Flower's own
   ``flwr-clientapp`` entry point with the launcher's arguments;
4. the launcher forwards SIGTERM/SIGINT to the child, waits for its exit
   status and exits with it, so that the SuperExec sees what it would have seen.

Every message still runs in a process of its own, which starts with nothing
from earlier messages (forked from the same untouched parent): Flower's
process isolation is kept, only the imports are paid once. Where the fork
server does not answer, the launcher runs Flower's ``flwr-clientapp`` itself,
cold, as before. ``fedtext client --cold-clientapps`` turns it off.

Wire (a Unix socket in the node's home, 0600, peers checked to be this user)::

    request   4-byte length, JSON {"argv": [...], "cwd": dir, "env": {...}}, with fds 0, 1, 2 attached
    replies   JSON line {"pid": child}    then    JSON line {"exit": code}

This module imports only the standard library at the top: the launcher runs it
without site-packages.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.processes import SocketServer

LAUNCHER_NAME = "flwr-clientapp"
# What every ClientApp process imports before its first line of work; the
# fedtext app itself is left to the child, which loads it from the run's FAB.
PRELOAD = (
    "flwr.supernode.cli",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.app",
    "flwr.common.serde",
    "numpy",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.asymmetric.x25519",
)
# What the child runs: Flower's own flwr-clientapp entry point (module, function).
ENTRY = ("flwr.supernode.cli", "flwr_clientapp")
# Top-level packages of fedtext: never handed from the server to a child.
_OWN_PACKAGES = ("client", "common", "server", "simulations")
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 1 << 22
_REAP_EVERY_S = 0.02


# --- the server -----------------------------------------------------------------------


def serve(path: Path) -> None:
    """Import :data:`PRELOAD`, listen at ``path`` and fork one child per request, forever."""
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound and listening under another name first: the socket appears at
    # ``path`` (what start_forkserver waits for) only once it accepts.
    staging = path.with_name(path.name + ".new")
    staging.unlink(missing_ok=True)
    listener.bind(str(staging))
    os.chmod(staging, 0o600)
    listener.listen(64)
    os.replace(staging, path)
    waiting: dict[int, tuple[socket.socket, float]] = {}  # child pid -> its launcher's connection, start
    # One thread, no pool: a fork copies only the calling thread, so nothing
    # else may hold a lock (logging's, the import lock) at the moment of forking.
    while True:
        ready, _, _ = select.select([listener], [], [], _REAP_EVERY_S if waiting else None)
        if ready:
            conn, _ = listener.accept()
            pid = _start_child(conn, listener, [c for c, _ in waiting.values()])
            if pid is None:
                conn.close()
            else:
                waiting[pid] = (conn, time.monotonic())
        _reap(waiting)


def _start_child(conn: socket.socket, listener: socket.socket, others: list[socket.socket]) -> int | None:
    """Read one request from ``conn`` and fork its child; None when the request is not served."""
    conn.settimeout(5.0)
    try:
        if not _same_user(conn):
            return None
        request, fds = _receive(conn)
    except (OSError, ValueError) as exc:
        print(f"fedtext forkserver: request refused: {exc}", file=sys.stderr, flush=True)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns
        listener.close()
        for other in others:
            other.close()
        conn.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass  # the launcher is gone; the child is reaped all the same
    return pid


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request and its 3 file descriptors; on any malformed request, the descriptors are closed."""
    data, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 3)
    try:
        if len(data) < _HEADER.size or len(fds) != 3:
            raise ValueError(f"expected a length, a JSON request and 3 file descriptors, got {len(data)} bytes "
                             f"and {len(fds)} descriptors")
        (length,) = _HEADER.unpack(data[: _HEADER.size])
        body = data[_HEADER.size:]
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                break
            body += chunk
        request = json.loads(body[:length])
        if not isinstance(request, dict) or not isinstance(request.get("argv"), list) \
                or not isinstance(request.get("env"), dict):
            raise ValueError("expected a request with 'argv' (a list) and 'env' (an object)")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, list(fds)


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the launcher's ``flwr-clientapp`` process, then exit."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(request.get("cwd") or "/")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        for name in [m for m in sys.modules if m.split(".")[0] in _OWN_PACKAGES]:
            del sys.modules[name]
        sys.argv = [LAUNCHER_NAME, *map(str, request["argv"])]
        module, function = ENTRY
        getattr(importlib.import_module(module), function)()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child reports every failure through its exit status
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(waiting: dict[int, tuple[socket.socket, float]]) -> None:
    """Send each finished child's exit status to its launcher; one log line per child."""
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid not in waiting:
            continue
        conn, started = waiting.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        print(f"flwr-clientapp {pid}: exit {code} after {time.monotonic() - started:.2f} s", flush=True)
        try:
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        except OSError:
            pass
        conn.close()


# --- the launcher (what the SuperExec runs as flwr-clientapp) ------------------------


def launch(path: Path, fallback: str, argv: list[str]) -> int:
    """Have the fork server at ``path`` run ``flwr-clientapp argv``; its exit status.

    Where no fork server answers, replace this process with ``fallback``
    (Flower's own ``flwr-clientapp``) and the same arguments.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [_HEADER.pack(len(body)) + body], [0, 1, 2])
        replies = conn.makefile("rb")
        child = json.loads(replies.readline())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        conn.close()
        os.execv(fallback, [fallback, *argv])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    line = replies.readline()
    conn.close()
    try:
        code = int(json.loads(line)["exit"])
    except (ValueError, KeyError, TypeError):
        return 1  # the fork server went away before the child ended
    if code < 0:  # the child died of a signal: so does its launcher, as the SuperExec would have seen
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def install_launcher(home: Path, server: Path, python: str, fallback: str) -> Path:
    """Write ``home/bin/flwr-clientapp``, the launcher for the fork server at socket ``server``.

    Returns the folder to put first on the SuperExec's ``PATH``.
    """
    folder = home / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / LAUNCHER_NAME
    here = Path(__file__).resolve().parent
    # -I -S: no site-packages, no user paths, no PYTHON* variables: this module
    # (imported as a top-level module from its own folder) needs only the standard library.
    script.write_text(
        f"#!{python} -IS\n"
        "import sys\n"
        f"sys.path.insert(0, {str(here)!r})\n"
        "import forkserver\n"
        f"sys.exit(forkserver.launch(forkserver.Path({str(server)!r}), {fallback!r}, sys.argv[1:]))\n"
    )
    script.chmod(0o700)
    return folder


# --- started by fedtext client -------------------------------------------------------


class ForkServer:
    """The running fork server of one node, and the folder of its launcher."""

    # A plain class: the launcher imports this module, and dataclasses would cost it milliseconds.
    def __init__(self, server: SocketServer, bin_dir: Path) -> None:
        self.server = server
        self.bin_dir = bin_dir

    def stop(self) -> None:
        """End it and any ClientApp process it forked that still runs."""
        self.server.stop()


def start_forkserver(home: Path, env: dict[str, str], ready_timeout: float = 60.0) -> ForkServer:
    """Start the node's fork server and install its launcher; return once it accepts requests.

    The caller puts ``bin_dir`` first on the SuperNode's ``PATH``. Output goes to
    ``forkserver.log`` in the node's home; it dies with this process.
    """
    from common.processes import flwr_bin, start_socket_server

    server = start_socket_server("client.forkserver", [], home, "forkserver", env, ready_timeout,
                                 "--cold-clientapps runs without it")
    return ForkServer(server, install_launcher(home, server.socket, sys.executable, flwr_bin(LAUNCHER_NAME)))


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m client.forkserver", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on.")
    serve(parser.parse_args(argv).socket)


if __name__ == "__main__":
    main()
