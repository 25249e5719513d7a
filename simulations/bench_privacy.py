"""``python -m simulations.bench_privacy``: what differential privacy costs, measured.

Three uses:

- ``python -m simulations.bench_privacy KEY=VALUE ...`` runs one federation
  (config keys, plus an optional ``tag=...``) through fedtext's real round loop,
  aggregation (SecAgg+ unless ``secagg=false``), privacy layer and ClientApp,
  in one process (``simulations.inprocess``: no SuperLink, no Ray), and prints
  one JSON line: accuracy and macro F1 by round, epsilon by round, wall time,
  bytes. ``--jobs FILE`` runs one such line per line of FILE.
- ``--overhead KEY=VALUE ...`` times local training steps with and without
  DP-SGD on the same model and rows, in the same process: the ratio is the
  per-step cost of per-row clipping and noise.
- ``--report FILE [OVERHEAD.json]`` writes the JSON lines of FILE as the
  privacy-utility table of docs/PRIVACY.md (and docs/benchmarks/privacy.json).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"
COMMAND = "python -m simulations.bench_privacy --report"


def federate(argv: list[str]) -> dict[str, Any]:
    """One federation in process; its per-round figures."""
    from common.config import FedTextConfig
    from common.model import silence_transformers
    from simulations.inprocess import run_in_process

    silence_transformers()
    kv = dict(a.split("=", 1) for a in argv)
    tag = kv.pop("tag", "")
    kv.setdefault("out", f"runs/bench_privacy/{tag or 'run'}")
    cfg = FedTextConfig.from_mapping(kv)
    started = time.perf_counter()
    run_in_process(cfg)
    seconds = time.perf_counter() - started
    doc = json.loads((Path(cfg.out) / "metrics.json").read_text())
    rounds = doc["rounds"]
    final = rounds[-1]["central"]
    return {
        "tag": tag, **kv,
        "acc": [r["central"]["accuracy"] for r in rounds],
        "final_acc": final["accuracy"], "final_f1": final["f1_macro"],
        "epsilon": [r["privacy"]["epsilon"] for r in rounds if r.get("privacy")],
        "noise_multiplier": next((r["privacy"]["noise_multiplier"] for r in rounds if r.get("privacy")), None),
        "problems": sum(len(r["clients"].get("problems", [])) for r in rounds),
        "bytes_up": sum(r["bytes_up"] for r in rounds), "seconds": round(seconds, 1),
        "stopped_early": doc.get("stopped_early", ""),
    }


def overhead(argv: list[str], steps: int = 8) -> dict[str, Any]:
    """Seconds per local step with and without DP-SGD, same model, rows and batch."""
    from common.config import FedTextConfig
    from common.model import (
        build_model,
        load_tokenizer,
        pick_device,
        silence_transformers,
    )
    from common.privacy.dpsgd import plan_for, train_private, trains_embeddings
    from common.splits import client_share, server_test_set_and_pool
    from common.training import train_model

    silence_transformers()
    kv = dict(a.split("=", 1) for a in argv)
    cfg = FedTextConfig.from_mapping({**kv, "local-steps": steps, "dp": "record"})
    test, pool = server_test_set_and_pool(cfg)
    rows = client_share(cfg, pool, 0, cfg.clients)[0]
    model, tokenizer, device = build_model(cfg, test.label_names), load_tokenizer(cfg), pick_device()
    plan = plan_for(len(rows), cfg)
    ghost = trains_embeddings(model)  # then train_private ghost-clips; time per-row clipping beside it
    timings: dict[str, list[float]] = {"plain": [], "dp-sgd": [], **({"per-row": []} if ghost else {})}
    for _ in range(2):  # alternate, so that all see the same machine load
        timings["plain"].append(train_model(model, rows, tokenizer, cfg, device, seed=1).seconds / steps)
        timings["dp-sgd"].append(train_private(model, rows, tokenizer, cfg, device, seed=1, plan=plan).seconds / steps)
        if ghost:
            timings["per-row"].append(train_private(model, rows, tokenizer, cfg, device, seed=1, plan=plan,
                                                    ghost=False).seconds / steps)
    plain, private = min(timings["plain"]), min(timings["dp-sgd"])
    figures = {**kv, "steps": steps, "expected_batch": plan.expected_batch, "plain_s_per_step": round(plain, 3),
               "dp_sgd_s_per_step": round(private, 3), "ratio": round(private / plain, 2),
               "clipping": "ghost" if ghost else "per-row",
               "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if ghost:
        figures["per_row_s_per_step"] = round(min(timings["per-row"]), 3)
    return figures


def _label(r: dict[str, Any]) -> str:
    if r.get("dp", "none") == "none":
        return "none (eps inf)"
    return f"{r['dp']}, eps {float(r.get('dp-epsilon', 8)):g}"


def report(path: str, overhead_path: str | None = None) -> str:
    """The privacy-utility table (markdown) of a JSON-lines file, written into docs/PRIVACY.md."""
    from common.reports import markers, replace_part, write_figures

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    keys = ("data", "clients", "partition", "freeze", "rounds", "fraction-train", "batch-size", "lr",
            "grad-accum-steps", "local-epochs", "min-local-steps", "dp-clip", "num-hidden-layers", "secagg",
            "max-examples")
    lines = ["| # | dataset | setup | privacy | noise mult. | eps spent | accuracy | macro F1 | vs. non-private | wall | up |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    baseline: dict[str, float] = {}
    for i, r in enumerate(rows, start=1):
        setup = " ".join(f"{k}={r.get(k, 'all')}" for k in keys[1:] if k in r or k == "max-examples")
        group = r.get("group", r.get("data", ""))
        if r.get("dp", "none") == "none":
            baseline[group] = r["final_acc"]
        ratio = f"{r['final_acc'] / baseline[group]:.3f}x" if group in baseline and r.get("dp", "none") != "none" else ""
        eps = f"{r['epsilon'][-1]:.2f}" if r.get("epsilon") else "-"
        noise = f"{r['noise_multiplier']:.3f}" if r.get("noise_multiplier") else "-"
        lines.append(f"| {i} | {r.get('data', '').removeprefix('packaged:')} | {setup} | {_label(r)} | {noise} | {eps} "
                     f"| {r['final_acc']:.3f} | {r['final_f1']:.3f} | {ratio} | {r['seconds']:.0f} s "
                     f"| {r['bytes_up'] / 1e6:.1f} MB |")
    body = "\n".join(lines)
    figures: dict[str, Any] = {"runs": rows}
    if overhead_path:
        over = json.loads(Path(overhead_path).read_text())
        figures["overhead"] = over
        body += "\n\n" + "\n".join(
            f"DP-SGD step overhead ({o.get('freeze', 'none')}, {o['trainable']:,} trainable, expected batch "
            f"{o['expected_batch']}, {o.get('clipping', 'per-row')} clipping): {o['dp_sgd_s_per_step']} s vs "
            f"{o['plain_s_per_step']} s per step, **{o['ratio']}x**"
            + (f" (per-row clipping of the same step: {o['per_row_s_per_step']} s)" if "per_row_s_per_step" in o
               else "") + "." for o in (over if isinstance(over, list) else [over]))
    population = extrapolate_population(rows)
    if population:
        figures["population"] = population
        body += "\n\n" + population["line"]
    write_figures(DOCS, "privacy", figures)
    begin, end = markers("privacy-utility", COMMAND)
    replace_part(DOCS / "PRIVACY.md", begin, end, body, "# Differential privacy in fedtext")
    return body


def extrapolate_population(rows: list[dict[str, Any]], target: float = 8.0,
                           tolerance: float = 0.02) -> dict[str, Any] | None:
    """The federation size at which client-level DP at ``target`` epsilon costs <= ``tolerance``.

    What decides the accuracy is the noise on the mean update, sigma C / K
    (K clients a round). Among the measured client-level runs within
    ``tolerance`` of their non-private run, take the largest such noise; at the
    same sampling rate q and rounds, the accountant gives the sigma that
    ``target`` needs, and K = q N clients bring its noise on the mean down to
    the measured one when N = sigma C / (q x noise).
    """
    from common.config import FedTextConfig
    from common.privacy.distributed import noise_multiplier

    base = {r.get("data"): r["final_acc"] for r in rows if r.get("dp", "none") == "none" and "clients" in r
            and int(r["clients"]) >= 50}
    fine = []
    for r in rows:
        if r.get("dp") != "client" or r.get("data") not in base or not r.get("noise_multiplier"):
            continue
        k = float(r.get("fraction-train", 1.0)) * int(r["clients"])
        noise = r["noise_multiplier"] * float(r.get("dp-clip", 1.0)) / k
        if r["final_acc"] >= base[r["data"]] - tolerance:
            fine.append((noise, r))
    if not fine:
        return None
    noise, r = max(fine, key=lambda x: x[0])
    keys = {k: r[k] for k in ("rounds", "fraction-train", "dp-delta", "dp-clip") if k in r}
    cfg = FedTextConfig.from_mapping({**keys, "dp": "client", "dp-epsilon": target, "secagg": False,
                                      "clients": 1000})
    # The noise a round carries is the calibrated one times what the run's own
    # rounds carried over theirs (under SecAgg, sqrt(survivors / noise floor)).
    carried = r["noise_multiplier"] / noise_multiplier(cfg.replace(dp_epsilon=float(r["dp-epsilon"])), 1)
    sigma = noise_multiplier(cfg, 1) * carried
    q = cfg.fraction_train
    population = math.ceil(sigma * cfg.dp_clip / (q * noise))
    line = (f"Client-level DP at epsilon {target:g} (delta {cfg.dp_delta:g}, {cfg.rounds} rounds, q = {q:g}) "
            f"carries noise multiplier {sigma:.3f} a round. The measured run '{r.get('tag')}' stayed within "
            f"{tolerance * 100:.0f} points of its non-private run with noise {noise:.4f} on the mean update; "
            f"at q = {q:g} that noise is reached with **about {population:,} clients** "
            f"({math.ceil(q * population):,} a round), extrapolated from the accountant.")
    return {"sigma": sigma, "noise_on_mean": noise, "clients": population, "from": r.get("tag"), "line": line}


def main(argv: list[str] | None = None) -> int:
    from common.processes import offline_environment
    from common.reports import read_jobs

    offline_environment()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    malformed = [a for a in args if a not in ("--report", "--overhead", "--jobs") and "=" not in a]
    if args[0] not in ("--report", "--jobs") and malformed:
        print(f"python -m simulations.bench_privacy: error: argument {malformed[0]!r}: expected KEY=VALUE "
              "(a config key), or --report / --overhead / --jobs; see --help", file=sys.stderr)
        return 2
    if args[:1] == ["--report"]:
        print(report(args[1], args[2] if len(args) > 2 else None))
        return 0
    if args[:1] == ["--overhead"]:
        print(json.dumps(overhead(args[1:])), flush=True)
        return 0
    jobs = read_jobs(args[1]) if args[:1] == ["--jobs"] else [args]
    for job in jobs:
        print(json.dumps(federate(job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
