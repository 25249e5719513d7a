"""``python -m simulations.bench_startup``: what a federated run costs outside its rounds.

Runs a short ``fedtext simulate`` (the packaged model and data, few rows, two
rounds) ``--repeats`` times and ``fedtext centralized`` on the same rows once,
stamping each line of their output as it appears. From the stamps and the
run's ``metrics.json``:

- **start-up**: from the command to round 1 starting (checks and
  partitioning, the SuperLink, ``flwr run``, the simulation engine, Ray, the
  ServerApp's model and its round-0 evaluation); round 1 itself is left out
  (its actors' warm-up shows as round 1 minus round 2);
- **shut-down**: from the last round's line to the process's exit;
- **centralized**: its whole run minus its epochs, the same way.

Figures go to ``docs/benchmarks/startup.json`` and between the markers of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from common.reports import command_line, markers, replace_part, write_figures
from simulations.benchmark import training_seconds

W = TypeVar("W", bound=AbstractContextManager[Any])
REPO = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = markers("startup", "python -m simulations.bench_startup")
ROUND_LINE = re.compile(r"^round (\d+)/(\d+) ")


def stamped(cmd: list[str], watch: Callable[[int], W] | None = None
            ) -> tuple[int, list[tuple[float, str]], W | None]:
    """Run ``cmd``; its exit code, each output line with the seconds since the start, and the watcher.

    ``watch``: given the process id, a context (e.g. a memory sampler) held
    while the command runs, and returned.
    """
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = watch(proc.pid) if watch else None
    with watcher if watcher is not None else nullcontext():
        lines = [(time.perf_counter() - started, line.rstrip()) for line in proc.stdout]  # type: ignore[union-attr]
        code = proc.wait()
    lines.append((time.perf_counter() - started, "<exit>"))
    return code, lines, watcher


def federated(out: Path, flags: list[str]) -> dict[str, Any]:
    code, lines, _ = stamped([sys.executable, "-m", "simulations.cli", "simulate", "--out", str(out), *flags])
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    seconds = {r["round"]: r["seconds"] for r in rounds}
    at = {int(m.group(1)): t for t, line in lines if (m := ROUND_LINE.match(line))}
    submitted = next(t for t, line in lines if " submitted; logs: " in line)
    last = max(at)
    return {
        "exit_code": code,
        "wall_s": round(lines[-1][0], 2),
        "checks_s": round(next(t for t, line in lines if line.startswith("model ")), 2),
        "submitted_s": round(submitted, 2),
        "round0_s": round(at[0], 2),
        # The line shows up to half a second after the round is recorded.
        "startup_s": round(at[1] - seconds[1], 2),
        "shutdown_s": round(lines[-1][0] - at[last], 2),
        "round_s": [round(seconds[r], 2) for r in sorted(seconds) if r >= 1],
    }


def centralized(out: Path, flags: list[str]) -> dict[str, Any]:
    code, lines, _ = stamped([sys.executable, "-m", "simulations.cli", "centralized", "--out", str(out), *flags])
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    # Its epochs alone: a centralized round's seconds also time its evaluation.
    epochs = sum(training_seconds(r) if r.get("phases_s") else r.get("seconds", 0.0) for r in rounds)
    return {"exit_code": code, "wall_s": round(lines[-1][0], 2), "epochs_s": round(epochs, 2),
            "outside_s": round(lines[-1][0] - epochs, 2)}


def markdown(doc: dict[str, Any]) -> str:
    runs = doc["simulate"]
    med = {k: statistics.median(r[k] for r in runs) for k in
           ("checks_s", "submitted_s", "round0_s", "startup_s", "shutdown_s", "wall_s")}
    rounds = [r["round_s"] for r in runs]
    c = doc["centralized"]
    lines = [f"Command: `{doc['command']}` (finished {doc['finished']}; figures in `docs/benchmarks/startup.json`). "
             f"`fedtext simulate {' '.join(doc['flags'])}`, {len(runs)} runs (medians below), and "
             "`fedtext centralized` on the same rows.", "",
             "| from the command to | seconds |", "|---|---|",
             f"| checks done, partitions written | {med['checks_s']:.1f} |",
             f"| run submitted (SuperLink up, `flwr run`) | {med['submitted_s']:.1f} |",
             f"| round 0 recorded (engine, Ray, ServerApp, model, round-0 evaluation) | {med['round0_s']:.1f} |",
             f"| **round 1 starting (start-up)** | **{med['startup_s']:.1f}** |", "",
             f"- **Shut-down** (last round's line to exit): {med['shutdown_s']:.1f} s. "
             f"**Start-up + shut-down: {med['startup_s'] + med['shutdown_s']:.1f} s** (goal: 15 s).",
             f"- Rounds: {'; '.join(', '.join(f'{x:.1f}' for x in r) for r in rounds)} s "
             "(round 1 includes the Ray actors' first imports and model load).",
             f"- Whole run: {med['wall_s']:.1f} s; centralized on the same rows {c['wall_s']:.1f} s, of which "
             f"{c['outside_s']:.1f} s outside its epochs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/bench_startup")
    p.add_argument("--docs", default="docs")
    args = p.parse_args(argv)
    command = command_line("simulations.bench_startup", argv)
    common = ["--rounds", "2", "--max-examples", "240", "--max-test-examples", "100",
              "--max-length", "64", "--local-steps", "2", "--min-local-steps", "0"]
    flags = ["--clients", "3", *common]
    out = Path(args.out).resolve()
    runs = []
    for i in range(args.repeats):
        runs.append(federated(out / f"simulate-{i}", flags))
        print(json.dumps(runs[-1]), flush=True)
    central = centralized(out / "centralized", common)
    print(json.dumps(central), flush=True)
    doc = {"command": command, "finished": time.strftime("%Y-%m-%d %H:%M"), "flags": flags,
           "simulate": runs, "centralized": central}
    write_figures(Path(args.docs), "startup", doc)
    path = replace_part(Path(args.docs) / "BENCHMARKS.md", MARK_BEGIN, MARK_END, markdown(doc),
                        "## Start-up and shut-down of a federated run")
    print(f"wrote {path}")
    return 0 if all(r["exit_code"] == 0 for r in [*runs, central]) else 1


if __name__ == "__main__":
    sys.exit(main())
