"""How ``fedtext tune`` hands trials to one long federated run, through a folder.

A study's federated trials all run inside one Flower run (one ServerApp, one
set of warm Ray actors), one federation after another, so that a trial costs
its rounds and not a process start. The tuner (``simulations.tuning``) owns
the study and decides; the ServerApp (``server.trials``) executes. They meet
in a folder on the machine they share:

=====================  ==========================================================
``trial-N.json``       tuner -> run: trial N's config keys and run folder
``trial-N.R.verdict``  tuner -> run: after round R, ``continue`` or ``stop`` (pruned)
``trial-N.done``       run -> tuner: ``completed``, ``pruned`` or ``failed: reason``
``closed``             tuner -> run: no more trials; the run ends
=====================  ==========================================================

Each round's figures travel the usual way, in the trial folder's
``metrics.json``. Files are written whole (``os.replace``), so a reader never
sees half of one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

POLL_S = 0.1


class QueueClosed(Exception):
    """The tuner said no more trials, or went away."""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_for(path: Path, closed: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if closed.exists():
            raise QueueClosed(f"{closed} says the study is over")
        time.sleep(POLL_S)
    raise QueueClosed(f"nothing at {path} within {timeout:.0f}s")


class TrialQueue:
    """The folder both sides use (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.closed = self.folder / "closed"

    # --- the tuner's side ------------------------------------------------------------

    def reset(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.iterdir():
            old.unlink()

    def put(self, number: int, params: dict[str, Any], out: str) -> None:
        _write(self.folder / f"trial-{number}.json", json.dumps({"number": number, "params": params, "out": out}))

    def verdict(self, number: int, server_round: int, go_on: bool) -> None:
        _write(self.folder / f"trial-{number}.{server_round}.verdict", "continue" if go_on else "stop")

    def result(self, number: int) -> str | None:
        path = self.folder / f"trial-{number}.done"
        return path.read_text() if path.exists() else None

    def close(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write(self.closed, "closed")

    # --- the run's side -----------------------------------------------------------------

    def next_trial(self, after: int, timeout: float) -> dict[str, Any]:
        """The first trial numbered above ``after``; :class:`QueueClosed` when there is none to come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            numbers = sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("trial-*.json"))
            waiting = [n for n in numbers if n > after]
            if waiting:
                return json.loads((self.folder / f"trial-{waiting[0]}.json").read_text())
            if self.closed.exists():
                raise QueueClosed("no more trials")
            time.sleep(POLL_S)
        raise QueueClosed(f"no trial came within {timeout:.0f}s")

    def wait_verdict(self, number: int, server_round: int, timeout: float) -> bool:
        """Whether trial ``number`` goes on after ``server_round``."""
        text = _wait_for(self.folder / f"trial-{number}.{server_round}.verdict", self.closed, timeout)
        return text.strip() == "continue"

    def done(self, number: int, status: str) -> None:
        _write(self.folder / f"trial-{number}.done", status)
