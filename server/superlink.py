"""Start a Flower SuperLink, submit the fedtext app to it, follow the run, stop it.

``fedtext simulate`` and ``fedtext server`` both go through :class:`LocalSuperLink`:

- Flower's state lives in the run folder (``FLWR_HOME``), not in ``~/.flwr``;
- runtime dependency installation is off (it would ``uv sync`` the app's
  dependencies into a fresh environment from the network);
- the SuperLink is a child process on free ports, stopped with its process
  group on exit, so nothing outlives the command;
- success is read from the run's status (``flwr ls``): ``flwr run`` exits 0
  even when the ServerApp failed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import FedTextConfig, toml_value
from common.errors import FedTextError
from common.processes import (
    APP_DIR,
    command_line,
    copy_without_colour,
    descendants,
    die_with_parent,
    flower_env,
    flwr_bin,
    free_port,
    is_alive,
    stop_process_group,
)
from server.outputs import final_figures, progress_line

CONNECTION = "fedtext"
# The processes Flower runs a run's ServerApp in: deployed, and simulated.
APP_PROCESSES = ("flwr-serverapp", "flwr-simulation")


@dataclass
class TlsFiles:
    """Certificate files of a TLS SuperLink (from ``fedtext certs``)."""

    ca: Path
    cert: Path
    key: Path


@dataclass
class LocalSuperLink:
    """A SuperLink child process and the ``flwr`` CLI connection to it.

    Parameters
    ----------
    home : Path
        ``FLWR_HOME`` for the SuperLink, its apps and the CLI.
    simulation : bool
        Run ClientApps in Flower's simulation engine (Ray) instead of waiting
        for SuperNodes.
    host : str
        Interface of the Fleet/Control HTTP API.
    port : int
        Its port (0 = a free one).
    tls : TlsFiles, optional
        Serve HTTPS with these files; ``None`` serves plain HTTP (``--insecure``).
    node_auth : bool
        Accept only SuperNodes whose public key was registered (needs TLS).
    """

    home: Path
    simulation: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    tls: TlsFiles | None = None
    node_auth: bool = False
    env_extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` the CLI and SuperNodes connect to."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "superlink.log"

    def env(self) -> dict[str, str]:
        return flower_env(self.home, self.env_extra)

    def start(self, timeout: float = 60.0) -> LocalSuperLink:
        """Launch the SuperLink and wait until its health endpoint answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        cmd = [
            # Flower's flower-superlink, holding pulls of objects in transit
            # (server/superlink_process.py).
            sys.executable, "-m", "server.superlink_process",
            "--host", self.host,
            "--port", str(self.port),
            "--health-server-address", f"127.0.0.1:{free_port()}",
            "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
            # No --database: Flower's in-memory state. With an SQLite file every
            # request (each SuperNode's pull every 0.2 s, each chunk of a model)
            # went through SQLAlchemy, most of the SuperLink's CPU on a deployed
            # round; fedtext starts a fresh SuperLink per run and keeps its own
            # checkpoints, so nothing read that file back.
        ]
        if self.simulation:
            cmd.append("--simulation")
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += [
                "--ssl-ca-certfile", str(self.tls.ca),
                "--ssl-certfile", str(self.tls.cert),
                "--ssl-keyfile", str(self.tls.key),
            ]
        if self.node_auth:
            cmd.append("--enable-supernode-auth")
        self.write_connection()
        log = self.log_path.open("ab")
        # A new session: stop() can then end the SuperLink and every process it
        # spawned (ServerApp, Ray workers, ClientApps) with one signal.
        self.process = subprocess.Popen(
            cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        import httpx

        scheme = "http" if self.tls is None else "https"
        verify: Any = False if self.tls is None else str(self.tls.ca)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise FedTextError(
                    f"SuperLink exited with code {self.process.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(f"{scheme}://{self.address}/health", timeout=1.0, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise FedTextError(f"SuperLink did not come up within {timeout:.0f}s; see {self.log_path}")

    def write_connection(self) -> None:
        """``FLWR_HOME/config.toml`` naming this SuperLink as connection ``fedtext``."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.address}"']
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.tls.ca}"')
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this SuperLink."""
        return subprocess.run(
            [flwr_bin("flwr"), *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def register_node_key(self, public_key: Path) -> None:
        """Allow the SuperNode holding the matching private key to connect."""
        res = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if res.returncode != 0:
            raise FedTextError(f"cannot register '{public_key}': {_last_line(res)}")

    def submit(
        self, run_config: Path, federation_config: dict[str, Any] | None = None, app: Path | None = None
    ) -> int:
        """Submit the app with its run config; return the run id.

        ``app``: the folder ``flwr run`` packs; by default a copy of fedtext's
        own app files staged in ``FLWR_HOME/app`` (:func:`stage_app`).
        """
        app = app or stage_app(self.home / "app")
        args = ["run", str(app), CONNECTION, "--run-config", str(run_config), "--format", "json"]
        if federation_config:
            args += ["--federation-config", " ".join(f"{k}={toml_value(v)}" for k, v in federation_config.items())]
        res = self.flwr(*args)
        payload = _json_payload(res)
        if not payload.get("success") or "run-id" not in payload:
            reason = str(payload.get("error-message", "")).strip().splitlines() or [_last_line(res)]
            raise FedTextError(f"flwr run failed: {reason[-1]}")
        return int(payload["run-id"])

    def app_alive(self) -> bool:
        """Whether a ServerApp (or simulation) process runs under this SuperLink.

        A look at /proc: asking Flower (:meth:`run_status`) starts a ``flwr``
        process that costs 2-3 CPU-seconds of imports, taken from the clients'
        training on a small machine.
        """
        if self.process is None:
            return False
        return any(is_alive(pid) and any(name in command_line(pid) for name in APP_PROCESSES)
                   for pid in descendants(self.process.pid))

    def run_status(self, run_id: int) -> tuple[str, str]:
        """(status, details) of a run, e.g. ``("finished:completed", "")``."""
        res = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=30)
        runs = _json_payload(res).get("runs") or [{}]
        return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))

    def stream_logs(self, run_id: int, path: Path) -> subprocess.Popen[bytes]:
        """Copy the run's logs (ServerApp output) into ``path`` as they come, without colour codes."""
        process = subprocess.Popen(
            [flwr_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"],
            env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert process.stdout is not None
        copy_without_colour(process.stdout, path)
        return process

    def stop(self, grace: float = 10.0) -> None:
        """Stop the SuperLink and everything it started: SIGTERM, then SIGKILL after ``grace`` s.

        Once a run has recorded its outcome nothing below the SuperLink holds
        anything worth a graceful end (the simulation engine spends 4-5 s
        shutting Ray down on SIGTERM), so callers then pass a short grace.
        """
        if self.process is not None:
            stop_process_group(self.process, grace=grace)
            self.process = None


# The packages the ServerApp and ClientApp import, and so all a node needs
# (tests/test_superlink.py checks that the apps import nothing else of fedtext's).
APP_PACKAGES = ("client", "common", "server")


def stage_app(target: Path, source: Path = APP_DIR) -> Path:
    """Write the app's pyproject.toml and copy :data:`APP_PACKAGES` into ``target``; return it.

    ``flwr run DIR`` walks every file under DIR before it filters them: in a
    checkout that holds its virtual environment and run folders, 66,000 files
    and 3.2 s of every submission (every tuning trial), and the FAB it built
    carried the docs, benchmark figures and tests, which no node runs.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / "pyproject.toml").write_text(app_pyproject())
    for package in APP_PACKAGES:
        shutil.copytree(source / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def app_pyproject() -> str:
    """The FAB's pyproject.toml: the tables Flower reads, the config keys at their defaults.

    Written, not copied from the checkout's pyproject.toml: an installed
    fedtext (``pip install .``, the container image) has none beside its
    packages. The keys are the same (tests/test_config.py keeps the checkout's
    ``[tool.flwr.app.config]`` equal to :class:`FedTextConfig`'s defaults).
    """
    from importlib import metadata

    try:
        version = metadata.version("fedtext")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, never installed
        version = "0.0.0"
    lines = ["[project]", 'name = "fedtext"', f"version = {toml_value(version)}",
             'description = "fedtext: federated fine-tuning of pretrained transformers for text classification"',
             'license = "Apache-2.0"', "",
             "[tool.flwr.app]", 'publisher = "fedtext"', "",
             "[tool.flwr.app.components]", 'serverapp = "server.app:app"', 'clientapp = "client.app:app"', "",
             "[tool.flwr.app.config]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in FedTextConfig().to_mapping().items()]
    return "\n".join(lines) + "\n"


# --- following a run -------------------------------------------------------------


def write_run_config(cfg: FedTextConfig, path: Path) -> Path:
    """Every config key as TOML, for ``flwr run --run-config FILE``."""
    lines = [f"{key} = {toml_value(value)}" for key, value in cfg.to_mapping().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def follow_run(
    superlink: LocalSuperLink, run_id: int, metrics: Path, on_round: Callable[[dict[str, Any]], None]
) -> tuple[str, str]:
    """Hand each round to ``on_round`` as it lands in ``metrics.json``, until the run is over.

    ``on_round`` prints it (``fedtext simulate``/``server``: :func:`echo_rounds`)
    or reports it to a tuning study, which may stop the run by raising.
    ``metrics.json`` is read every :data:`POLL_S` seconds (cheap). The run is
    over when the ServerApp has recorded its outcome and told the clients
    (``clients_told``): what Flower does after that (shutting the simulation's
    Ray down) is not waited for. A ServerApp that died without recording
    anything is caught by the run's status (:class:`RunWatch`).
    """
    shown, watch = 0, RunWatch(superlink, run_id)
    while True:
        doc = _read_metrics(metrics)
        shown = _new_rounds(doc, shown, on_round)
        outcome = _app_outcome(doc)
        if outcome is not None:
            return outcome
        if (finished := watch.finished()) is not None:
            doc = _read_metrics(metrics)
            _new_rounds(doc, shown, on_round)
            return _app_outcome(doc) or finished
        time.sleep(POLL_S)


class RunWatch:
    """Whether Flower has finished a run, asked only when it is due.

    Asking costs a ``flwr ls`` process (2-3 CPU-seconds of imports, taken from
    the clients' training on a small machine). Every ``every`` seconds
    (:data:`STATUS_EVERY` by default) the watch looks: it asks Flower when the
    app's process is gone, and at most every :data:`ALIVE_STATUS_EVERY`
    seconds while it lives (a hung app whose run Flower has already failed).
    """

    def __init__(self, superlink: LocalSuperLink, run_id: int, every: float | None = None) -> None:
        self.superlink, self.run_id = superlink, run_id
        self.every = STATUS_EVERY if every is None else every
        self.last_look = self.last_asked = time.monotonic()

    def finished(self) -> tuple[str, str] | None:
        """Flower's (status, details) once the run has finished; None while it runs or when not due."""
        now = time.monotonic()
        if now - self.last_look < self.every:
            return None
        self.last_look = now
        if self.superlink.app_alive() and now - self.last_asked < ALIVE_STATUS_EVERY:
            return None
        self.last_asked = now
        status, details = self.superlink.run_status(self.run_id)
        return (status, details) if status.startswith("finished") else None


def echo_rounds(echo: Callable[[str], None], rounds: int) -> Callable[[dict[str, Any]], None]:
    """An ``on_round`` for :func:`follow_run` that prints each round's progress line."""
    return lambda entry: echo(progress_line(entry, rounds))


STATUS_EVERY = 15.0
ALIVE_STATUS_EVERY = 120.0
POLL_S = 0.5


def _read_metrics(metrics: Path) -> dict[str, Any]:
    """``metrics.json`` as the ServerApp last wrote it (``{}`` before it exists)."""
    try:
        doc = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _app_outcome(doc: dict[str, Any]) -> tuple[str, str] | None:
    """The run's outcome as the ServerApp recorded it, once it has also told the clients."""
    status = str(doc.get("status", "running"))
    if status == "running" or "clients_told" not in doc:
        return None
    return ("finished:completed", "") if status == "completed" else ("finished:failed", status)


def _new_rounds(doc: dict[str, Any], shown: int, on_round: Callable[[dict[str, Any]], None]) -> int:
    for entry in doc.get("rounds", [])[shown:]:
        shown += 1
        on_round(entry)
    return shown


def report_run(status: str, details: str, out: Path, echo, command: str) -> int:  # noqa: ANN001
    """Final lines and exit code, from the run status and the run folder."""
    try:
        doc = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        doc = {}
    app_status = doc.get("status", "missing metrics.json")
    if status == "finished:completed" and app_status == "completed":
        echo(f"done: {final_figures(doc)}; model in {out / 'model'}, metrics in {out / 'metrics.json'}")
        return 0
    reason = app_status if app_status.startswith("failed") else (details or status)
    echo(f"{command}: run {status or 'unknown'}: {reason}; see {out / 'run.log'}")
    return 1


def _json_payload(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object ``flwr ... --format json`` printed (``{}`` if none)."""
    try:
        payload = json.loads(res.stdout[res.stdout.index("{"):])
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    text = (res.stderr or "") + (res.stdout or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {res.returncode}"
