"""Micro-benchmark of the SecAgg+ core: client masking and server unmasking.

Runs a real round (real keys, shares and masks) in one process for each
vector size and reports wall-clock times of the expensive steps:

* client stage 2 (encode + self mask + pairwise masks), per 1M parameters;
* server stage 3 sum of the masked vectors and ``finish`` (share
  reconstruction, mask removal for survivors and for one stage-2 dropout,
  decoding).

Usage::

    python -m simulations.bench_secagg_core --out bench.json
    python -m simulations.bench_secagg_core --sizes 1000000 22700000 --clients 10 --neighbours 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np

from common.secagg import SecAggClient, SecAggParams, SecAggServer


def bench_round(num_params: int, num_clients: int, neighbours: int, repeats: int) -> dict[str, Any]:
    """Time one round of ``num_clients`` clients with updates of ``num_params`` floats."""
    params = SecAggParams(num_neighbours=neighbours, threshold=0.6, clip=1.0, bits=22, max_weight=10_000)
    ids = list(range(1, num_clients + 1))
    server = SecAggServer(params)
    clients = {i: SecAggClient(i, params) for i in ids}
    update = np.random.default_rng(0).uniform(-1, 1, num_params).astype(np.float32)

    requests = server.stage0_requests(ids)
    requests = server.stage1_requests({i: clients[i].stage0(r) for i, r in requests.items()})
    requests = server.stage2_requests({i: clients[i].stage1(r) for i, r in requests.items()})

    # Time masking on copies of one client's state so every repeat is a fresh stage 2.
    probe = ids[0]
    state = clients[probe].to_state()
    mask_times = []
    for _ in range(repeats):
        client = SecAggClient.from_state(state)
        start = time.perf_counter()
        client.stage2(requests[probe], update, 100)
        mask_times.append(time.perf_counter() - start)

    dropped = ids[-1]  # one stage-2 dropout exercises sk_c reconstruction
    replies2 = {i: clients[i].stage2(r, update, 100) for i, r in requests.items() if i != dropped}
    start = time.perf_counter()
    requests = server.stage3_requests(replies2)
    sum_time = time.perf_counter() - start
    replies3 = {i: clients[i].stage3(r) for i, r in requests.items()}
    start = time.perf_counter()
    result = server.finish(replies3)
    finish_time = time.perf_counter() - start
    assert np.abs(result.mean_update - update).max() < 1e-3  # sanity: identical updates

    degree = len(server.neighbours(probe))
    best = min(mask_times)
    return {
        "num_params": num_params,
        "num_clients": num_clients,
        "neighbours_requested": neighbours,
        "graph_degree": degree,
        "threshold": server.threshold,
        "client_stage2_s_best": best,
        "client_stage2_s_median": float(np.median(mask_times)),
        "client_masking_ms_per_1M_params": 1e3 * best / (num_params / 1e6),
        "server_sum_s": sum_time,
        "server_finish_s": finish_time,
        "server_unmask_total_s": sum_time + finish_time,
        "survivors": len(result.survivors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 22_700_000])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--neighbours", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    results = []
    for size in args.sizes:
        row = bench_round(size, args.clients, args.neighbours, args.repeats)
        results.append(row)
        print(
            f"m={size:>11,d}  degree={row['graph_degree']}  client masking "
            f"{row['client_masking_ms_per_1M_params']:.1f} ms/1M params "
            f"({row['client_stage2_s_best'] * 1e3:.0f} ms)  server unmask "
            f"{row['server_unmask_total_s'] * 1e3:.0f} ms ({row['survivors']} survivors, 1 dropout)"
        )
    if args.out:
        report = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()},
            "results": results,
        }
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
