"""``python -m simulations.recipe_sweep``: the measurements behind fedtext's default recipe.

Choosing defaults takes dozens of runs per dataset and split; a real
simulation spends most of a short run starting processes. This tool runs a
federation's arithmetic in one process instead, with fedtext's own pieces:
the same partitions (``common.splits``), the same local training
(``common.training.train_model``, lr schedule included), the same
example-weighted mean of the clients' updates, and Flower's own strategy
applied to it (``server.aggregation.apply_update``). What it leaves out is the
transport: no SuperLink, no Ray, no SecAgg+ masking (whose quantization
changes updates by ~1e-7; docs/SECAGG.md). The chosen recipe is then checked
with real simulations by ``simulations.benchmark``.

Each argument is ``KEY=VALUE`` (config keys), plus ``mode=fed|central`` and an
optional ``tag=...``; ``server_beta_1=X`` overrides FedAdam's and FedYogi's beta_1
(no config key sets it).
One JSON line comes out: the accuracy and macro F1 on the server's test set
after every round. ``--jobs FILE`` runs one such line of arguments per line;
``--report FILE`` prints a JSON-lines file of results as a markdown table
(docs/TUNING.md's, from docs/benchmarks/recipe_sweep.jsonl).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def run(argv: list[str]) -> dict[str, Any]:
    """One configuration, federated or centralized; its per-round test figures."""
    import datasets
    import numpy as np
    from flwr.supercore.task_identity import TaskIdentity

    from common.config import FedTextConfig
    from common.freezing import load_trainable_state, trainable_state
    from common.messages import from_array_record, instruction_config
    from common.model import build_model, pick_device, silence_transformers
    from common.recipe import peak_lr, round_span
    from common.splits import client_share, server_test_set_and_pool
    from common.training import train_model
    from server.aggregation import RoundUpdate, apply_update
    from server.global_model import GlobalModel
    from server.strategies import build_strategy
    from simulations.inprocess import InProcessGrid

    # Strategies build Messages; outside a Flower runtime they need a task identity.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    silence_transformers()
    kv = dict(a.split("=", 1) for a in argv)
    mode, tag = kv.pop("mode", "fed"), kv.pop("tag", "")
    # A strategy attribute no config key sets, for what-ifs: server_beta_1=X.
    overrides = {k: float(kv.pop(k)) for k in ("server_beta_1",) if k in kv}
    cfg = FedTextConfig.from_mapping({"secagg": False, "min-clients": 1, **kv})
    test, pool = server_test_set_and_pool(cfg)
    labels = test.label_names
    shares = [client_share(cfg, pool, pid, cfg.clients)[0] for pid in range(cfg.clients)]
    server = GlobalModel(cfg, labels)
    device = pick_device()
    first = server.evaluate(test)
    accuracy, f1 = [round(first["accuracy"], 4)], [round(first["f1_macro"], 4)]
    started = time.time()

    def record() -> None:
        m = server.evaluate(test)
        accuracy.append(round(m["accuracy"], 4))
        f1.append(round(m["f1_macro"], 4))

    if mode == "central":
        rows = datasets.concatenate_datasets(shares)
        for r in range(1, cfg.rounds + 1):
            train_model(server.model, rows, server.tokenizer, cfg, device, seed=cfg.seed + 1000 * r,
                        span=round_span(r, cfg.rounds, cfg.lr_schedule))
            record()
    else:
        strategy = build_strategy(cfg)
        for key, value in overrides.items():
            setattr(strategy, key.removeprefix("server_"), value)
        client = build_model(cfg, labels)
        arrays, grid = server.arrays(), InProcessGrid(cfg)
        mu = getattr(strategy, "proximal_mu", 0.0)  # what FedProx sends its clients
        for r in range(1, cfg.rounds + 1):
            list(strategy.configure_train(r, arrays, instruction_config(r, labels), grid))
            start = from_array_record(arrays)
            summed = {k: np.zeros_like(v, dtype=np.float64) for k, v in start.items()}
            for pid, share in enumerate(shares):
                load_trainable_state(client, start)
                train_model(client, share, server.tokenizer, cfg, device, seed=cfg.seed + 1000 * r + pid,
                            proximal_mu=mu, span=round_span(r, cfg.rounds, cfg.lr_schedule))
                trained = trainable_state(client)
                for k in start:
                    summed[k] += len(share) * (trained[k] - start[k]).astype(np.float64)
            total = sum(len(s) for s in shares)
            mean = {k: (v / total).astype(np.float32) for k, v in summed.items()}
            arrays = apply_update(strategy, r, arrays, RoundUpdate(mean, total, cfg.clients))
            server.load(arrays)
            record()
    return {"tag": tag, "mode": mode, **kv, **overrides,
            "lr_used": peak_lr(cfg), "acc": accuracy, "f1": f1, "final_acc": accuracy[-1], "final_f1": f1[-1],
            "sec": round(time.time() - started), "sizes": [len(s) for s in shares], "ntest": len(test)}


SHOWN = ("data", "partition", "freeze", "lr", "rounds", "local-epochs", "lr-schedule", "warmup-ratio",
         "strategy", "server-lr", "server-tau", "server_beta_1", "server-momentum", "seed")


def report(path: str) -> str:
    """A markdown table of a JSON-lines file of results (one row per run, in file order)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    head = "| # | run | dataset | partition | freeze | lr | rounds x local epochs | other | acc by round | acc | macro F1 |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, start=1):
        other = " ".join(f"{k}={r[k]}" for k in SHOWN[6:] if k in r)
        curve = " ".join(f"{a:.2f}" for a in r["acc"][1:])
        lines.append(f"| {i} | {r['mode']} {r.get('tag', '')} | {r.get('data', '').removeprefix('packaged:')} | {r.get('partition', 'iid')} "
                     f"| {r.get('freeze', 'none')} | {r['lr_used']:g} | {r.get('rounds', 10)} x {r.get('local-epochs', 0.5)} "
                     f"| {other} | {curve} | {r['final_acc']:.3f} | {r['final_f1']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from common.processes import offline_environment
    from common.reports import read_jobs

    offline_environment()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--report"]:
        print(report(args[1]))
        return 0
    if args[:1] == ["--jobs"]:
        jobs = read_jobs(args[1])
    else:
        jobs = [args]
    for job in jobs:
        print(json.dumps(run(job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
