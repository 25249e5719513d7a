"""One trial of a study: a federated simulation (or the centralized baseline), round by round.

A trial is an ordinary fedtext run in its own folder, with the test set left
alone (``central-eval`` off). After each round its objective is read from the
clients' held-out rows (``clients.evaluate`` in ``metrics.json``: the rows each
client keeps aside, ``client-eval-fraction``) and reported to the study, whose
pruner may stop it there.

Federated trials all run inside one Flower run (:class:`FederationRunner`):
one SuperLink, one Ray head, one ServerApp and one set of client actors for
the whole study, so a trial costs its rounds and not a start-up. Centralized
trials run in this process (``simulations.centralized``).
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
    """One Flower run that executes every federated trial of a study.

    A SuperLink in simulation mode and a Ray head start once; one run is
    submitted with ``trial-queue`` set, and its ServerApp (``server.trials``)
    takes the trials this runner queues (``common.trial_queue``), one
    federation after another, on the same warm Ray actors. After each round
    the runner reports the objective to the study and tells the run to go on
    or to stop the trial (pruned).

    Parameters
    ----------
    home : Path
        ``FLWR_HOME`` of the SuperLink, Ray's log and the queue folder.
    base : FedTextConfig
        The study's base config (trials set their keys over it).
    num_cpus : int, optional
        CPUs of the Ray head (default: all of this machine's).
    """

    def __init__(self, home: Path, base: FedTextConfig, num_cpus: int | None = None) -> None:
        from common.trial_queue import TrialQueue
        from server.superlink import LocalSuperLink
        from simulations.ray_cluster import RayNode

        self.home, self.base = home, base
        self.queue = TrialQueue(home / "queue")
        self.ray = RayNode(home / "ray.log", num_cpus or os.cpu_count() or 1)
        self.superlink = LocalSuperLink(home=home, simulation=True)
        self.run_id = 0
        self.started_s = 0.0

    def start(self) -> FederationRunner:
        from server.superlink import write_run_config

        started = time.perf_counter()
        self.queue.reset()
        self.ray.start()
        self.superlink.env_extra["RAY_ADDRESS"] = self.ray.address
        self.superlink.start()
        cfg = self.base.replace(trial_queue=str(self.queue.folder), central_eval=False)
        self.run_id = self.superlink.submit(
            write_run_config(cfg, self.home / "run_config.toml"),
            {"num-supernodes": cfg.clients, "client-resources-num-cpus": cfg.client_cpus,
             "client-resources-num-gpus": cfg.client_gpus},
        )
        self.started_s = time.perf_counter() - started
        return self

    def stop(self) -> None:
        """Close the queue, let the run finish, stop the SuperLink and Ray."""
        self.queue.close()
        if self.run_id:
            try:
                _wait_finished(self.superlink, self.run_id, timeout=60)
            except FedTextError:
                pass  # stopping the SuperLink below ends it anyway
        self.superlink.stop()
        self.ray.stop()

    def run(self, number: int, params: dict[str, Any], cfg: FedTextConfig, metric: str,
            report: Callable[[int, float], None]) -> TrialRun:
        """Queue trial ``number`` and follow it; ``report(round, value)`` may raise :class:`StopTrial`."""
        from server.superlink import RunWatch

        run = TrialRun()
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        metrics = out / "metrics.json"
        metrics.unlink(missing_ok=True)
        started = time.perf_counter()
        self.queue.put(number, params, str(out))
        on_round = _round_callback(run, metric, report)
        shown, watch = 0, RunWatch(self.superlink, self.run_id, every=30.0)  # the run itself may have died
        while (status := self.queue.result(number)) is None:
            rounds = _rounds(metrics)
            for entry in rounds[shown:]:
                shown += 1
                if entry.get("round", 0) < 1:
                    continue
                try:
                    on_round(entry)
                except StopTrial:
                    self.queue.verdict(number, entry["round"], go_on=False)
                else:
                    self.queue.verdict(number, entry["round"], go_on=True)
            if (finished := watch.finished()) is not None:
                state, details = finished
                raise FedTextError(f"the study's Flower run ended ({state} {details}); see {self.home}")
            time.sleep(0.1)
        run.status = status.split(":", 1)[0]
        run.reason = status.split(":", 1)[1].strip() if ":" in status else ""
        run.wall_s = time.perf_counter() - started
        return run


def _rounds(metrics: Path) -> list[dict[str, Any]]:
    import json

    try:
        return json.loads(metrics.read_text()).get("rounds", [])
    except (OSError, ValueError):
        return []


def _wait_finished(superlink: Any, run_id: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if superlink.run_status(run_id)[0].startswith("finished"):
            return
        time.sleep(1.0)
    raise FedTextError(f"run {run_id} did not finish within {timeout:.0f}s")


def run_centralized(number: int, params: dict[str, Any], cfg: FedTextConfig, metric: str,
                    report: Callable[[int, float], None]) -> TrialRun:
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
