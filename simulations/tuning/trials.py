"""One trial of a study: a federated simulation (or the centralized baseline), round by round.

A trial is an ordinary fedtext run in its own folder, with the test set left
alone (``central-eval`` off). After each round its objective is read from the
clients' held-out rows (``clients.evaluate`` in ``metrics.json``: the rows each
client keeps aside, ``client-eval-fraction``) and reported to the study, whose
pruner may stop it there.

Federated trials share one SuperLink and one Ray head for the whole study
(:class:`FederationRunner`): a trial costs one ``flwr run`` submission and its
own ServerApp and client actors, not a SuperLink and a Ray start. A pruned
trial is stopped with ``flwr stop``, which ends its ServerApp and its actors.
Centralized trials run in this process (``simulations.centralized``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import FedTextConfig
from common.errors import FedTextError

# The objective metrics, and whether larger is better.
OBJECTIVES = {"accuracy": True, "f1_macro": True, "loss": False}


class StopTrial(Exception):
    """Raised from a round callback to stop the trial's run (its study pruned it)."""


@dataclass
class TrialRun:
    """What one trial's run did.

    Attributes
    ----------
    values : list[float]
        The objective after each round (rounds 1..R), as reported.
    status : str
        ``completed``, ``pruned`` or ``failed``.
    reason : str
        Why it failed (empty otherwise).
    wall_s : float
        From submission (or start) to the end of the run.
    rounds_s : float
        Sum of the recorded round times: the training, aggregation and evaluation work.
    """

    values: list[float] = field(default_factory=list)
    status: str = "completed"
    reason: str = ""
    wall_s: float = 0.0
    rounds_s: float = 0.0


def objective_value(entry: dict[str, Any], metric: str) -> float | None:
    """The objective in a round entry: the clients' held-out rows, never the test set."""
    held_out = entry.get("clients", {}).get("evaluate") or {}
    value = held_out.get(metric)
    return float(value) if value is not None else None


def _round_callback(run: TrialRun, metric: str, report: Callable[[int, float], None]) -> Callable[[dict], None]:
    def on_round(entry: dict[str, Any]) -> None:
        if entry.get("round", 0) < 1:
            return
        run.rounds_s += float(entry.get("seconds", 0.0))
        value = objective_value(entry, metric)
        if value is None:
            raise FedTextError(
                f"round {entry['round']}: no held-out evaluation in metrics.json "
                "(tuning needs client-eval-fraction > 0 and fraction-evaluate 1)"
            )
        run.values.append(value)
        report(entry["round"], value)  # may raise StopTrial

    return on_round


class FederationRunner:
    """One SuperLink in simulation mode and one Ray head, for every federated trial of a study.

    Parameters
    ----------
    home : Path
        ``FLWR_HOME`` of the shared SuperLink (and Ray's log).
    num_cpus : int
        CPUs of the Ray head (default: all of this machine's).
    """

    def __init__(self, home: Path, num_cpus: int | None = None) -> None:
        from server.superlink import LocalSuperLink
        from simulations.ray_head import RayHead

        self.home = home
        self.ray = RayHead(home / "ray.log", num_cpus or os.cpu_count() or 1)
        self.superlink = LocalSuperLink(home=home, simulation=True)
        self.started_s = 0.0

    def start(self) -> FederationRunner:
        started = time.perf_counter()
        self.ray.start()
        self.superlink.env_extra["RAY_ADDRESS"] = self.ray.address
        self.superlink.start()
        self.started_s = time.perf_counter() - started
        return self

    def stop(self) -> None:
        self.superlink.stop()
        self.ray.stop()

    def run(self, cfg: FedTextConfig, metric: str, report: Callable[[int, float], None]) -> TrialRun:
        """Run one federated trial; ``report(round, value)`` may raise :class:`StopTrial`."""
        from server.superlink import CONNECTION, follow_run, write_run_config

        run = TrialRun()
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        metrics = out / "metrics.json"
        metrics.unlink(missing_ok=True)
        started = time.perf_counter()
        run_id = self.superlink.submit(
            write_run_config(cfg, out / "run_config.toml"),
            {"num-supernodes": cfg.clients, "client-resources-num-cpus": cfg.client_cpus,
             "client-resources-num-gpus": cfg.client_gpus},
        )
        try:
            status, details = follow_run(self.superlink, run_id, metrics, _round_callback(run, metric, report))
        except StopTrial:
            self.superlink.flwr("stop", str(run_id), CONNECTION, timeout=60)
            _wait_finished(self.superlink, run_id)
            run.status = "pruned"
        else:
            if status != "finished:completed":
                run.status, run.reason = "failed", _failure(metrics, details or status)
        run.wall_s = time.perf_counter() - started
        return run


def _wait_finished(superlink: Any, run_id: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if superlink.run_status(run_id)[0].startswith("finished"):
            return
        time.sleep(1.0)
    raise FedTextError(f"run {run_id} did not stop within {timeout:.0f}s after `flwr stop`")


def _failure(metrics: Path, fallback: str) -> str:
    import json

    try:
        status = json.loads(metrics.read_text()).get("status", "")
    except (OSError, ValueError):
        status = ""
    return status.removeprefix("failed: ") if status.startswith("failed") else fallback


def run_centralized(cfg: FedTextConfig, metric: str, report: Callable[[int, float], None]) -> TrialRun:
    """Run one centralized trial in this process; ``report`` may raise :class:`StopTrial`."""
    from simulations.centralized import centralized

    run = TrialRun()
    started = time.perf_counter()
    try:
        centralized(cfg, echo=lambda _line: None, on_round=_round_callback(run, metric, report))
    except StopTrial:
        run.status = "pruned"
    except FedTextError as exc:
        run.status, run.reason = "failed", str(exc)
    run.wall_s = time.perf_counter() - started
    return run
