"""Processes fedtext starts and stops: Flower executables, their environment, signals.

Every command that starts Flower processes (``fedtext simulate``, ``server``,
``client``, ``tune``) goes through these helpers, so that

- Flower executables are the ones installed next to this Python, with an
  environment that keeps them offline and inside the run folder (:func:`flower_env`);
- SIGTERM and SIGHUP end a command like Ctrl-C, so its ``finally`` blocks run
  (:func:`install_signal_handlers`);
- stopping a child stops every process below it, whatever session it started
  (:func:`stop_process_group`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

APP_DIR = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_bin(name: str) -> str:
    """Path of a Flower executable installed next to this Python."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_flower_entry(module: str, function: str, script: str) -> int | None:
    """Run Flower's console entry point ``module:function`` in this process, as its ``script`` would.

    For fedtext's wrappers of Flower's processes (``server/superlink_process.py``,
    ``client/supernode.py``), which adjust Flower's modules first. Where a
    later Flower has moved the entry point, its ``script`` replaces this
    process instead, unadjusted but working.
    """
    import importlib

    try:
        entry = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        os.execvp(flwr_bin(script), [script, *sys.argv[1:]])
    sys.argv[0] = script
    return entry()


TELEMETRY_ENV = "FLWR_TELEMETRY_ENABLED"


def unix_socket_path(home: Path, name: str) -> Path:
    """``home/name`` for a Unix socket, or ``name`` in a private temporary folder
    when that path is too long for one (108 bytes on Linux)."""
    path = home / name
    if len(os.fsencode(path)) < 100:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="fedtext-")) / name


@dataclass
class SocketServer:
    """A node's helper process that serves on a Unix socket (the warm worker, the ClientApp fork server)."""

    process: subprocess.Popen[bytes]
    socket: Path
    home: Path

    def stop(self) -> None:
        """End it and everything it started; remove its socket."""
        stop_process_group(self.process, grace=3.0)
        self.socket.unlink(missing_ok=True)
        if self.socket.parent != self.home:  # a temporary folder of unix_socket_path's
            self.socket.parent.rmdir()


def start_socket_server(module: str, args: list[str], home: Path, name: str, env: dict[str, str],
                        ready_timeout: float, without: str) -> SocketServer:
    """Run ``python -m module --socket SOCKET *args`` for a node; return once SOCKET exists.

    The socket is ``home/name.sock`` (or in a temporary folder when that path is
    too long), the output goes to ``home/name.log``; the process runs in a
    session of its own and dies with this one. When it does not start, raises
    a RuntimeError naming the log's last line and ``without`` (how to run
    without it).
    """
    socket_file = unix_socket_path(home, f"{name}.sock")
    socket_file.unlink(missing_ok=True)
    log_file = home / f"{name}.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--socket", str(socket_file), *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )
    server = SocketServer(process, socket_file, home)
    deadline = time.monotonic() + ready_timeout
    while not socket_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = log_file.read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"{module} did not start (see {log_file}: {' '.join(tail)}); {without}")
        time.sleep(0.05)
    return server


def offline_environment() -> None:
    """This process's settings: nothing fetched from the hub, no progress bars, no Flower telemetry.

    Offline, a missing file fails fast instead of retrying downloads; per-call
    progress bars (weights loaded, indices flattened) drown the round lines.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault(TELEMETRY_ENV, "0")  # as in flower_env, for Flower code run in this process


def flower_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes; apps inherit the SuperLink's."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # Ray's dashboard and usage stats reach for the network; not needed.
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "0",
            # Without an address, ray.init() connects to whatever cluster
            # /tmp/ray/ray_current_cluster names: a dead one left by a killed
            # run (the simulation then fails after a long timeout) or someone
            # else's. "local" starts a fresh instance; a RAY_ADDRESS the user
            # set is kept (a cluster of their own).
            "RAY_ADDRESS": os.environ.get("RAY_ADDRESS") or "local",
            "PYTHONUNBUFFERED": "1",
            # flower-superexec looks for a message to start a ClientApp (or a
            # run to start a ServerApp) for once a second by default: up to 1 s
            # per message, five messages a round under SecAgg+. A tenth of
            # that costs a local request ten times a second.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        }
    )
    # Flower posts a usage event to telemetry.flower.ai from every process it
    # starts, each message's ClientApp process too: a data holder's node should
    # not call out unasked, and loading the CA bundle for it cost a ClientApp
    # process 0.3-0.9 s of CPU here. A value the user set is kept (1: send).
    env.setdefault(TELEMETRY_ENV, "0")
    # flower-superlink spawns flower-superexec by name: find it next to Python.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The app's packages must resolve to this checkout, whoever starts Python.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP_DIR), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def die_with_parent() -> None:
    """``preexec_fn`` of a child that must not outlive this process, even after SIGKILL.

    Linux delivers SIGTERM to the child when its parent dies (PR_SET_PDEATHSIG),
    so a killed ``fedtext`` command leaves no SuperLink or Ray head behind.
    Elsewhere it does nothing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


# --- signals ------------------------------------------------------------------------


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the command like Ctrl-C: finally-blocks stop the children."""
    def _stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig, handler in ((signal.SIGTERM, _stop), (signal.SIGHUP, _stop), (signal.SIGINT, signal.default_int_handler)):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread
            pass


def ignore_signals() -> None:
    """While children are being stopped, a second Ctrl-C/SIGTERM must not cut it short."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass


# --- processes ----------------------------------------------------------------------


def stop_process_group(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Stop a child and every process below it: SIGTERM, then SIGKILL after ``grace`` s.

    The child runs in its own process group, but flower-superlink starts
    flower-superexec in yet another session, so the tree is collected from
    ``/proc`` first and each process is signalled, not only the group.
    """
    pids = [process.pid, *descendants(process.pid)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            # Our own child is done when it is reaped: a multithreaded process shows
            # as a zombie while its other threads still exit, and cannot be reaped yet.
            if process.poll() is not None and not any(is_alive(pid) for pid in pids[1:]):
                return
            time.sleep(0.05)
    process.poll()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, from /proc; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    """A process's arguments joined by spaces, from /proc ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_alive(pid: int) -> bool:
    # Zombies count as dead: where PID 1 does not reap orphans they linger.
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def in_fresh_process(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a fresh Python interpreter: its result, or its exception raised here.

    For a command's checks that import torch, transformers and datasets when
    the command then only starts and follows Flower's processes for the rest
    of the run: those imports' memory leaves with the child. ``function``
    must be importable by name (a module-level function) and its arguments
    and result picklable. The child is ``python -m common.processes``, not a
    multiprocessing spawn, so that it never re-runs the caller's main script.
    """
    import pickle

    path = os.pathsep.join(p for p in (str(APP_DIR), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-m", "common.processes"], input=pickle.dumps((function, args)),
                          stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})
    try:
        succeeded, value = pickle.loads(done.stdout)
    except Exception:  # noqa: BLE001 - the child died before answering: say so, whatever the bytes were
        raise RuntimeError(f"{function.__qualname__} in a fresh process: exit code {done.returncode}, "
                           "no result") from None
    if not succeeded:
        raise value
    return value


# Terminal colour codes (SGR sequences), as Flower's console handler writes them whatever its output is.
ANSI_COLOUR = re.compile(rb"\x1b\[[0-9;]*m")


def copy_without_colour(stream: IO[bytes], path: Path) -> threading.Thread:
    """Append what ``stream`` yields to ``path`` without colour codes, in a thread; return it.

    Flower colours its log lines unconditionally; in a file the codes are noise.
    The thread ends when ``stream`` does (its process stopped).
    """

    def copy() -> None:
        with stream, path.open("ab") as out:
            for raw in stream:
                out.write(ANSI_COLOUR.sub(b"", raw))
                out.flush()

    thread = threading.Thread(target=copy, name=f"copy-to-{path.name}")
    thread.start()
    return thread


def _call_from_stdin() -> None:
    """The child's half of :func:`in_fresh_process`: read the call, write ``(succeeded, result or exception)``."""
    import pickle

    answer = sys.stdout.buffer
    sys.stdout = sys.stderr  # what the call prints reaches the terminal, not the pickled answer
    function, args = pickle.loads(sys.stdin.buffer.read())
    try:
        outcome = pickle.dumps((True, function(*args)))
    except Exception as exc:  # noqa: BLE001 - raised again in the parent
        try:
            outcome = pickle.dumps((False, exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle still gets its one line across
            outcome = pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    answer.write(outcome)
    answer.flush()


if __name__ == "__main__":
    _call_from_stdin()
