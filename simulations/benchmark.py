"""``python -m simulations.benchmark``: federated against centralized fine-tuning.

For each dataset (Rotten Tomatoes, BBC News) the plan holds one centralized
baseline per freezing policy and, against them, federated runs that change one
thing at a time from the reference ``fedavg, dirichlet:0.5, SecAgg on,
bottom:4``:

=====================  =====================================================
partition              ``iid`` vs ``dirichlet:0.5``
strategy               FedAvg vs FedProx vs FedAdam
secure aggregation     on vs ``--no-secagg``
freezing               ``none`` / ``bottom:4`` / ``head`` / ``lora``
=====================  =====================================================

Every run is a ``fedtext centralized`` or ``fedtext simulate`` process with
the same model, rows, sequence length and total local epochs (centralized
trains ``rounds`` epochs on the union of the clients' rows; a federation
trains ``rounds`` rounds of one local epoch). While it runs, this driver
samples the memory of its whole process tree (Ray workers included); after it,
it reads the run's ``metrics.json``. It writes ``benchmark.json``, a table per
dataset and plots, and rewrites the generated part of ``docs/BENCHMARKS.md``
(between its markers), leaving the prose around it alone.

Clients hold out nothing for federated evaluation and are not asked to
evaluate (``client-eval-fraction 0``, ``fraction-evaluate 0``): both sides
then train on the same rows and evaluate the same way, on the server's test set
once per round, so wall times compare the same work.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from common.plots import pyplot

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"rotten_tomatoes": "packaged:rotten_tomatoes", "bbc_news": "packaged:bbc_news"}
FREEZES = ("bottom:4", "none", "head", "lora")
REFERENCE_FREEZE = "bottom:4"
# One learning rate per freezing policy, shared by the centralized and the
# federated runs: the fewer parameters train, the larger the step they take
# (a few hundred examples, three epochs).
LEARNING_RATES = {"none": 1e-4, "bottom:4": 3e-4, "head": 2e-3, "lora": 1e-3}
MARK_BEGIN = "<!-- benchmark:begin (written by python -m simulations.benchmark; edits here are lost) -->"
MARK_END = "<!-- benchmark:end -->"


@dataclass(frozen=True)
class Scenario:
    """One run of the benchmark.

    Parameters
    ----------
    name : str
        Unique within a dataset, e.g. ``fedavg-dirichlet-secagg``.
    dataset : str
        A key of :data:`DATASETS`.
    command : str
        ``centralized`` or ``simulate``.
    flags : dict
        Config keys (kebab-case) and values given on the command line.
    baseline : str
        Name of the centralized scenario it is compared with (itself for one).
    """

    name: str
    dataset: str
    command: str
    flags: dict[str, Any]
    baseline: str

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"

    def argv(self, out: Path) -> list[str]:
        args = [sys.executable, "-m", "simulations.cli", self.command]
        for k, v in self.flags.items():
            if isinstance(v, bool):
                args.append(f"--{k}" if v else f"--no-{k}")
            else:
                args += [f"--{k}", str(v)]
        return [*args, "--out", str(out)]


@dataclass
class Result:
    """What one scenario measured (figures from its ``metrics.json`` and the sampler)."""

    key: str
    dataset: str
    name: str
    command: str
    flags: dict[str, Any]
    baseline: str
    exit_code: int
    wall_seconds: float
    round_seconds: float
    train_steps: int
    peak_rss_mb: float
    peak_pss_mb: float
    accuracy: float
    f1_macro: float
    accuracy_by_round: list[float] = field(default_factory=list)
    bytes_up_per_client_round: float = 0.0
    trainable_parameters: int = 0
    seconds_by_round: list[float] = field(default_factory=list)


def plan(datasets: list[str], max_examples: dict[str, int], max_test: int, clients: int, rounds: int,
         seed: int, num_hidden_layers: int = 0, batch_size: int = 8) -> list[Scenario]:
    """The runs, centralized baselines first within each dataset."""
    scenarios = []
    for ds in datasets:
        common = {
            "data": DATASETS[ds], "max-examples": max_examples[ds], "max-test-examples": max_test,
            "max-length": 64, "batch-size": batch_size, "clients": clients, "rounds": rounds, "local-epochs": 1,
            "client-eval-fraction": 0.0, "seed": seed, "num-hidden-layers": num_hidden_layers,
        }

        def federated(name: str, freeze: str = REFERENCE_FREEZE, **changes: Any) -> Scenario:
            flags = {**common, "freeze": freeze, "lr": LEARNING_RATES[freeze], "partition": "dirichlet:0.5",
                     "strategy": "fedavg", "secagg": True, "fraction-evaluate": 0.0, "min-clients": clients,
                     **changes}
            return Scenario(name, ds, "simulate", flags, f"centralized-{freeze}")

        for freeze in FREEZES:
            flags = {**common, "freeze": freeze, "lr": LEARNING_RATES[freeze], "partition": "dirichlet:0.5"}
            scenarios.append(Scenario(f"centralized-{freeze}", ds, "centralized", flags, f"centralized-{freeze}"))
        scenarios += [
            federated("fedavg-iid", partition="iid"),
            federated("fedavg-dirichlet"),
            federated("fedavg-dirichlet-no-secagg", secagg=False),
            federated("fedprox-dirichlet", strategy="fedprox", **{"proximal-mu": 0.01}),
            federated("fedadam-dirichlet", strategy="fedadam"),
            *(federated(f"fedavg-dirichlet-{f}", freeze=f) for f in FREEZES if f != REFERENCE_FREEZE),
        ]
    return scenarios


class TreeMemory:
    """Peak memory of a process and all its descendants, sampled in a thread.

    RSS counts a page shared by several processes (torch's libraries in every
    Ray worker) once per process; PSS splits it among them, so the PSS sum is
    what the run really holds.
    """

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue  # exited between listing and reading
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self.interval)


def run_scenario(s: Scenario, out: Path, log=print) -> Result:  # noqa: ANN001
    """Run one scenario as its own process; read back its figures."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (out / "benchmark.log").open("wb") as logfile:
        proc = subprocess.Popen(s.argv(out), cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT)
        try:
            with TreeMemory(proc.pid) as memory:
                code = proc.wait()
        except BaseException:
            # Interrupted: the fedtext command stops its own SuperLink and Ray on SIGTERM.
            proc.terminate()
            proc.wait(timeout=120)
            raise
    wall = time.perf_counter() - started
    doc = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {"rounds": []}
    rounds = [r for r in doc["rounds"] if r["round"] > 0]
    final = doc["rounds"][-1]["central"] if doc["rounds"] else {}
    result = Result(
        key=s.key, dataset=s.dataset, name=s.name, command=s.command, flags=s.flags, baseline=s.baseline,
        exit_code=code, wall_seconds=round(wall, 2),
        round_seconds=round(sum(r["seconds"] for r in rounds), 2),
        train_steps=sum(_round_steps(r) for r in rounds),
        peak_rss_mb=round(memory.peak_rss / 2**20, 1), peak_pss_mb=round(memory.peak_pss / 2**20, 1),
        accuracy=final.get("accuracy", math.nan), f1_macro=final.get("f1_macro", math.nan),
        accuracy_by_round=[r["central"]["accuracy"] for r in doc["rounds"]],
        bytes_up_per_client_round=(sum(r.get("bytes_up_per_client", 0) for r in rounds) / len(rounds)
                                   if rounds else 0.0),
        trainable_parameters=doc.get("model", {}).get("trainable_params", 0),
        seconds_by_round=[r["seconds"] for r in rounds],
    )
    (out / "result.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    status = "ok" if code == 0 else f"FAILED (exit {code}, see {out / 'benchmark.log'})"
    log(f"{s.key}: acc {result.accuracy:.4f} f1 {result.f1_macro:.4f} | {wall:.0f} s | "
        f"PSS {result.peak_pss_mb:.0f} MB | {status}")
    return result


def reused_result(s: Scenario, out: Path) -> Result | None:
    """A finished earlier run of exactly this scenario (``--reuse``), or None."""
    try:
        done = Result(**json.loads((out / "result.json").read_text()))
        if not done.seconds_by_round:  # written before that field existed
            rounds = json.loads((out / "metrics.json").read_text())["rounds"]
            done.seconds_by_round = [r["seconds"] for r in rounds if r["round"] > 0]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return done if done.exit_code == 0 and done.flags == s.flags and done.command == s.command else None


def _round_steps(entry: dict[str, Any]) -> int:
    """Optimizer steps of one recorded round, summed over the clients that trained."""
    if "train_steps" in entry:  # centralized
        return int(entry["train_steps"])
    clients = entry.get("clients", {})
    return round(clients.get("train", {}).get("train-steps", 0) * clients.get("trained", 0))


def ratios(results: list[Result]) -> list[dict[str, Any]]:
    """Each result with its ratios to its centralized baseline."""
    by_key = {r.key: r for r in results}
    rows = []
    for r in results:
        base = by_key.get(f"{r.dataset}/{r.baseline}")
        row = asdict(r)
        if base is not None and base.exit_code == 0:
            row["accuracy_ratio"] = r.accuracy / base.accuracy
            row["f1_ratio"] = r.f1_macro / base.f1_macro
            row["wall_ratio"] = r.wall_seconds / base.wall_seconds
            row["round_time_ratio"] = r.round_seconds / base.round_seconds
            # Round 1 of a simulation also starts the Ray actors (torch, the model, the data).
            row["later_rounds_ratio"] = sum(r.seconds_by_round[1:]) / max(sum(base.seconds_by_round[1:]), 1e-9)
        rows.append(row)
    return rows


def markdown_tables(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    """One table per dataset, in plan order."""
    head = ("| run | freeze | acc | macro F1 | acc / central | F1 / central | wall s | wall / central "
            "| round time / central | rounds 2+ / central | steps | MB up per client-round | peak PSS MB "
            "| peak RSS MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    parts = []
    for ds in datasets:
        lines = []
        for row in (r for r in rows if r["dataset"] == ds):
            fail = "" if row["exit_code"] == 0 else f" (failed, exit {row['exit_code']})"
            lines.append(
                f"| {row['name']}{fail} | {row['flags']['freeze']} | {row['accuracy']:.4f} | {row['f1_macro']:.4f} "
                f"| {_fmt(row.get('accuracy_ratio'))} | {_fmt(row.get('f1_ratio'))} | {row['wall_seconds']:.0f} "
                f"| {_fmt(row.get('wall_ratio'), 2)} | {_fmt(row.get('round_time_ratio'), 2)} "
                f"| {_fmt(row.get('later_rounds_ratio'), 2)} "
                f"| {row['train_steps']} | {row['bytes_up_per_client_round'] / 1e6:.3f} "
                f"| {row['peak_pss_mb']:.0f} | {row['peak_rss_mb']:.0f} |"
            )
        parts.append(f"### {ds}\n\n{head}" + "\n".join(lines) + f"\n\n![{ds}](benchmarks/{ds}.png)\n")
    return "\n".join(parts)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def goal_lines(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    """The issue's two goals, checked on the reference federated run of each dataset."""
    out = []
    for ds in datasets:
        row = next((r for r in rows if r["dataset"] == ds and r["name"] == "fedavg-dirichlet"), None)
        if row is None or "accuracy_ratio" not in row:
            continue
        acc, wall, rt = row["accuracy_ratio"], row["wall_ratio"], row["round_time_ratio"]
        out.append(
            f"- {ds}: FedAvg, dirichlet:0.5, SecAgg: accuracy {acc:.3f} x centralized "
            f"({'meets' if acc >= 0.99 else f'misses by {0.99 - acc:.3f}'} the 0.99 goal); wall time "
            f"{wall:.2f} x ({'meets' if wall <= 1.10 else f'misses by {wall - 1.10:.2f}'} the 1.10 goal), "
            f"time in rounds {rt:.2f} x, rounds after the first {row['later_rounds_ratio']:.2f} x."
        )
    return "\n".join(out) + "\n"


def plot_dataset(rows: list[dict[str, Any]], ds: str, path: Path) -> None:
    """Left: final accuracy per run against its centralized baseline. Right: accuracy by round."""
    plt = pyplot()
    mine = [r for r in rows if r["dataset"] == ds]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(14, 4.5))
    names = [r["name"] for r in mine]
    bars.barh(names, [r["accuracy"] for r in mine],
              color=["tab:gray" if r["command"] == "centralized" else "tab:blue" for r in mine])
    bars.invert_yaxis()
    bars.set_xlabel("final accuracy (server test set)")
    lo = min((r["accuracy"] for r in mine if not math.isnan(r["accuracy"])), default=0.0)
    bars.set_xlim(max(0.0, lo - 0.1), 1.0)
    bars.grid(axis="x", alpha=0.3)
    for r in mine:
        if r["flags"]["freeze"] == REFERENCE_FREEZE or r["command"] == "centralized":
            curves.plot(range(len(r["accuracy_by_round"])), r["accuracy_by_round"], marker="o",
                        linestyle="--" if r["command"] == "centralized" else "-", label=r["name"])
    curves.set_xlabel("round (centralized: epoch)")
    curves.set_ylabel("accuracy")
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    fig.suptitle(ds)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(rows: list[dict[str, Any]], datasets: list[str], command: str, docs: Path) -> Path:
    """Write the JSON and plots; replace the generated part of ``docs/BENCHMARKS.md``."""
    (docs / "benchmarks").mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks" / "benchmark.json").write_text(json.dumps({"command": command, "runs": rows}, indent=1) + "\n")
    for ds in datasets:
        plot_dataset(rows, ds, docs / "benchmarks" / f"{ds}.png")
    machine = f"{psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    generated = (f"{MARK_BEGIN}\n\nCommand: `{command}` ({machine}; finished "
                 f"{time.strftime('%Y-%m-%d %H:%M')}; figures in `docs/benchmarks/benchmark.json`).\n\n"
                 f"{goal_lines(rows, datasets)}\n{markdown_tables(rows, datasets)}\n{MARK_END}")
    path = docs / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{MARK_BEGIN}\n{MARK_END}\n"
    if MARK_BEGIN not in text or MARK_END not in text:
        text += f"\n{MARK_BEGIN}\n{MARK_END}\n"
    before, rest = text.split(MARK_BEGIN, 1)
    after = rest.split(MARK_END, 1)[1]
    path.write_text(before + generated + after)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="rotten_tomatoes,bbc_news", help="Comma-separated: rotten_tomatoes, bbc_news.")
    p.add_argument("--max-examples", default="rotten_tomatoes=600,bbc_news=400",
                   help="Training rows per dataset, DATASET=N,... (sized for under an hour on 2 CPU cores).")
    p.add_argument("--max-test-examples", type=int, default=400, help="Server test rows per dataset.")
    p.add_argument("--clients", type=int, default=4, help="Simulated clients (SecAgg needs 3 or more).")
    p.add_argument("--rounds", type=int, default=3, help="Rounds, and centralized epochs.")
    p.add_argument("--batch-size", type=int, default=8,
                   help="Examples per step, centralized and per client. Small, so that a client's "
                        "share of a few hundred rows still makes tens of steps per round.")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-hidden-layers", type=int, default=0,
                   help="Keep only the bottom N encoder layers (0 = the whole model; 1 for quick checks).")
    p.add_argument("--only", default="", help="Comma-separated scenario names to run (default: all).")
    p.add_argument("--out", default="runs/benchmark", help="Run folders go here, one per scenario.")
    p.add_argument("--reuse", action="store_true",
                   help="Keep the figures of runs already finished in --out with the same flags; run the rest.")
    p.add_argument("--docs", default="docs", help="Folder of BENCHMARKS.md and benchmarks/ (JSON, plots).")
    args = p.parse_args(argv)
    from common.processes import install_signal_handlers

    install_signal_handlers()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        p.error(f"--datasets: unknown {', '.join(unknown)}; expected some of {', '.join(DATASETS)}")
    try:
        sizes = {k: int(v) for k, v in (item.split("=") for item in args.max_examples.split(","))}
    except ValueError:
        p.error(f"--max-examples: expected DATASET=N,..., got '{args.max_examples}'")
    missing = [d for d in datasets if d not in sizes]
    if missing:
        p.error(f"--max-examples: no size for {', '.join(missing)}")
    scenarios = plan(datasets, sizes, args.max_test_examples, args.clients, args.rounds, args.seed,
                     args.num_hidden_layers, args.batch_size)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        scenarios = [s for s in scenarios if s.name in wanted]
    command = "python -m simulations.benchmark" + "".join(f" {a}" for a in (argv or sys.argv[1:]) if a != "--reuse")
    print(f"{len(scenarios)} runs; run folders in {args.out}")
    started = time.perf_counter()
    results = []
    for s in scenarios:
        out = Path(args.out) / s.dataset / s.name
        done = reused_result(s, out) if args.reuse else None
        results.append(done or run_scenario(s, out))
    report = write_report(ratios(results), datasets, command, Path(args.docs))
    print(f"{time.perf_counter() - started:.0f} s in all; wrote {report} and {Path(args.docs) / 'benchmarks'}")
    return 0 if all(r.exit_code == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
