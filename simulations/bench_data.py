"""``python -m simulations.bench_data``: what a large corpus costs a simulation, before round 1 and per message.

A simulation reads and partitions its data once (``fedtext simulate``'s
checks), saves each client's share in the run folder, and every message then
memory-maps one share (``common.splits``). This benchmark states what that
costs on the packaged Rotten Tomatoes corpus (12,808 rows) and on a synthetic
corpus of 200,000 rows made from it, for 1,000 clients:

- **prepare**: load the file and split off the server's test rows, partition
  the rest, write 1,000 shares: seconds each, and the peak RSS of the process
  that does it (a fresh one per corpus and partition);
- **per message**: what one simulated client's message pays for its rows,
  its saved share opened and split into train and evaluation rows (median
  over clients, in a fresh process after a first, unmeasured, read), against
  the path without saved shares (load the whole file and partition it again,
  what every message paid before), which grows with the corpus.

The synthetic corpus repeats the packaged reviews; copy ``k`` of a review
names its movie ``<movie> #k``, so that a natural split has as many movies to
share out as the corpus has copies. Figures go to ``docs/benchmarks/data.json``
and between the markers of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from common.reports import add_report_arguments, command_line, markers, read_figures, replace_part, write_figures

REPO = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = markers("data", "python -m simulations.bench_data")
HEADING = "## A large corpus: 200,000 rows for 1,000 clients"

# Run in a fresh interpreter per measurement, so that its peak RSS is its own.
_PREPARE = """
import json, resource, sys, time
from common.config import FedTextConfig
from common.partition import load_partitions
from common.splits import server_test_set_and_pool, write_client_shares
cfg = FedTextConfig(**json.loads(sys.argv[1]))
t0 = time.perf_counter()
test, pool = server_test_set_and_pool(cfg)
t1 = time.perf_counter()
shares = load_partitions(pool.dataset, cfg.partition, cfg.clients, cfg.seed)
t2 = time.perf_counter()
write_client_shares(cfg, shares, test.label_names)
t3 = time.perf_counter()
sizes = sorted(len(s) for s in shares)
print(json.dumps({"load_s": t1 - t0, "partition_s": t2 - t1, "write_s": t3 - t2, "labels": test.label_names,
                  "pool_rows": len(pool.dataset), "share_rows": [sizes[0], sizes[len(sizes) // 2], sizes[-1]],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_MESSAGE = """
import json, resource, statistics, sys, time
from common.config import FedTextConfig
from common.splits import client_share, simulated_client_data, training_pool
cfg = FedTextConfig(**json.loads(sys.argv[1]))
labels, ids, path = json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
simulated_client_data(cfg, labels, 0, cfg.clients)  # imports and first open, not a message's cost
times = []
for pid in ids:
    t0 = time.perf_counter()
    train, held_out = simulated_client_data(cfg, labels, pid, cfg.clients)
    times.append(time.perf_counter() - t0)
    assert len(train) + len(held_out) > 0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
if path == "repartition":
    client_share(cfg, training_pool(cfg, labels), ids[0], cfg.clients)
print(json.dumps({"share_s": times, "peak_rss_mb": rss,
                  "repartition_s": time.perf_counter() - t0 if path == "repartition" else None}))
"""


def synthetic_corpus(path: Path, rows: int) -> tuple[Path, int]:
    """``rows`` rows repeating the packaged Rotten Tomatoes reviews (copy k: movie ``<name> #k``); and their count."""
    import csv

    from common.packaged import ROTTEN_TOMATOES, packaged_dataset

    base = packaged_dataset(ROTTEN_TOMATOES).select_columns(["text", "label", "movie_name"]).to_list()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "movie_name"])
        writer.writeheader()
        for i in range(rows):
            row = base[i % len(base)]
            copy = i // len(base)
            writer.writerow({**row, "movie_name": row["movie_name"] + (f" #{copy}" if copy else "")})
    return path, len(base)


def _python(code: str, *args: str) -> dict[str, Any]:
    """Run a measurement; a fedtext error (e.g. a partition the rows cannot give) comes back as ``error``."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        if not last.startswith("common.errors."):
            raise SystemExit(f"bench_data: a measurement failed:\n{proc.stderr[-2000:]}")
        return {"error": last.split(": ", 1)[1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(name: str, data: str, rows: int, partition: str, clients: int, out: Path,
            repartition: bool) -> dict[str, Any]:
    """Prepare one corpus for ``clients`` clients, then time messages' reads of their rows."""
    # Rows do not depend on SecAgg+; off, the config needs no per-round sample for its bit-width check.
    cfg = {"data": data, "partition": partition, "clients": clients, "seed": 42, "out": str(out), "secagg": False}
    prep = _python(_PREPARE, json.dumps(cfg))
    if "error" in prep:
        print(json.dumps({"corpus": name, "partition": partition, **prep}), flush=True)
        return {"corpus": name, "rows": rows, "partition": partition, "clients": clients, **prep}
    ids = list(range(1, clients, max(1, clients // 20)))[:20]
    msg = _python(_MESSAGE, json.dumps(cfg), json.dumps(prep["labels"]), json.dumps(ids),
                  "repartition" if repartition else "shares")
    result = {
        "corpus": name, "rows": rows, "partition": partition, "clients": clients,
        "load_s": round(prep["load_s"], 2), "partition_s": round(prep["partition_s"], 2),
        "write_shares_s": round(prep["write_s"], 2), "prepare_peak_rss_mb": round(prep["peak_rss_mb"]),
        "pool_rows": prep["pool_rows"], "share_rows_min_median_max": prep["share_rows"],
        "per_message_share_ms": round(1000 * statistics.median(msg["share_s"]), 2),
        "message_process_peak_rss_mb": round(msg["peak_rss_mb"]),
        "per_message_repartition_s": round(msg["repartition_s"], 2) if msg["repartition_s"] is not None else None,
    }
    print(json.dumps(result), flush=True)
    return result


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"Command: `{doc['command']}` (finished {doc['finished']}; figures in `docs/benchmarks/data.json`). "
             f"{doc['clients']:,} clients; the synthetic corpus repeats the packaged reviews (copy k of a review "
             "is by movie `<name> #k`). Peak RSS is that of the one process doing the step.", "",
             "| corpus | rows | partition | load + test split (s) | partition (s) | write shares (s) "
             "| peak RSS, prepare (MB) | share rows (min / median / max) | per message: its share (ms) "
             "| per message without shares: load + partition again (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        if "error" in r:
            lines.append(f"| {r['corpus']} | {r['rows']:,} | {r['partition']} | fails: {r['error']} |||||||")
            continue
        again = f"{r['per_message_repartition_s']:.2f}" if r["per_message_repartition_s"] is not None else "-"
        lines.append(f"| {r['corpus']} | {r['rows']:,} | {r['partition']} | {r['load_s']:.2f} "
                     f"| {r['partition_s']:.2f} | {r['write_shares_s']:.2f} | {r['prepare_peak_rss_mb']:,} "
                     f"| {' / '.join(str(x) for x in r['share_rows_min_median_max'])} "
                     f"| {r['per_message_share_ms']:.1f} | {again} |")
    runs = doc["runs"]
    small = next((r for r in runs if r["corpus"] == "packaged" and r["partition"] == "iid" and "error" not in r), None)
    big = next((r for r in runs if r["corpus"] == "synthetic" and r["partition"] == "iid" and "error" not in r), None)
    if small and big:
        lines += ["", f"- Per message, IID: a client opens its saved share in {small['per_message_share_ms']:.1f} ms "
                  f"({small['share_rows_min_median_max'][1]} rows, from {small['rows']:,}) and "
                  f"{big['per_message_share_ms']:.1f} ms ({big['share_rows_min_median_max'][1]} rows, from "
                  f"{big['rows']:,}): milliseconds, set by the share, not the corpus. Loading and partitioning "
                  f"the file again, as every message did before shares, costs {small['per_message_repartition_s']:.2f} s "
                  f"and {big['per_message_repartition_s']:.2f} s: it grows with the corpus."]
    return "\n".join(lines) + "\n"


def write_report(doc: dict[str, Any], docs: Path) -> Path:
    write_figures(docs, "data", doc)
    return replace_part(docs / "BENCHMARKS.md", MARK_BEGIN, MARK_END, markdown(doc), HEADING)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="Rows of the synthetic corpus.")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--partitions", default="iid,dirichlet:0.5,column:movie_name",
                   help="Partition schemes, comma-separated.")
    p.add_argument("--out", default="runs/bench_data")
    add_report_arguments(p, "data")
    args = p.parse_args(argv)
    if args.report:
        print(f"wrote {write_report(read_figures(Path(args.docs), 'data'), Path(args.docs))}")
        return 0
    out = Path(args.out)
    corpus, packaged_rows = synthetic_corpus(out / f"synthetic_{args.rows}.csv", args.rows)
    runs = []
    for partition in [s.strip() for s in args.partitions.split(",") if s.strip()]:
        for name, data, rows in (("packaged", "packaged:rotten_tomatoes", packaged_rows),
                                 ("synthetic", str(corpus), args.rows)):
            runs.append(measure(name, data, rows, partition, args.clients,
                                out / f"{name}-{partition.replace(':', '-')}", repartition=partition == "iid"))
    doc = {"command": command_line("simulations.bench_data", argv),
           "finished": time.strftime("%Y-%m-%d %H:%M"), "clients": args.clients, "runs": runs}
    print(f"wrote {write_report(doc, Path(args.docs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
