"""``python -m serve.bench``: serving throughput and latency, export accuracy; writes docs/SERVING.md.

1. **Export**: the model to ONNX and int8 (``serve.export``); accuracy, label
   agreement with PyTorch, size and per-text latency of each on the labeled
   test texts (the demo's: Rotten Tomatoes rows it never trained on).
2. **Baseline**: one request at a time through ``transformers.pipeline()``, the
   way a notebook classifies texts, for ``--seconds``.
3. **Served**: ``fedtext serve`` (its own process) under ``--clients``
   concurrent clients for ``--seconds``, once per backend (PyTorch, ONNX,
   int8): requests per second, p50 / p95 / p99 latency, failures.
4. **Overload**: ``--overload-clients`` clients against a small queue: the
   503s with Retry-After that keep latency bounded instead of a collapse.

Every text is cut to the model's max length (``"truncate": true``), so every
request is one full-length text. Figures go to ``docs/SERVING.md`` (between
markers) and ``docs/benchmarks/serving.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common.reports import command_line, markers, replace_part, write_figures

REPO = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = markers("serving", "python -m serve.bench")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load_texts(data: str, limit: int, seed: int) -> tuple[list[str], list[str]]:
    """(texts, labels) of a labeled file or packaged corpus: the held-out test rows of that data."""
    from common.config import FedTextConfig
    from common.splits import server_test_set

    test = server_test_set(FedTextConfig(data=data, max_test_examples=limit, seed=seed))
    names = test.label_names
    return list(test.dataset["text"]), [names[i] for i in test.dataset["label"]]


def baseline_pipeline(model: Path, texts: list[str], seconds: float, max_length: int) -> dict[str, Any]:
    """One text at a time through ``pipeline()``: the loop a notebook runs."""
    from transformers import pipeline

    import common.pooled_model  # noqa: F401 - registers the mean-pooling classifier

    classify = pipeline("text-classification", model=str(model), tokenizer=str(model))
    classify(texts[0], truncation=True, max_length=max_length)  # warm-up
    latencies, started, i = [], time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        classify(texts[i % len(texts)], truncation=True, max_length=max_length)
        latencies.append(time.perf_counter() - t)
        i += 1
    wall = time.perf_counter() - started
    return _summary("pipeline() loop, 1 request at a time", latencies, 0, wall)


def _summary(name: str, latencies: list[float], failed: int, wall: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "requests": len(latencies), "failed": failed, "seconds": round(wall, 1),
        "requests_per_second": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1), **extra,
    }


def load(url: str, texts: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, each posting one text after another for ``seconds``."""
    import httpx

    ok: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as http:
            i = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    code = http.post(f"{url}/predict", json={"inputs": texts[i % len(texts)],
                                                             "truncate": True}).status_code
                except httpx.HTTPError:
                    code = -1
                elapsed = time.perf_counter() - t
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    if code == 200:
                        ok.append(elapsed)
                i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - started
    failed = sum(n for c, n in codes.items() if c not in (200, 503))
    return _summary("", ok, failed, wall, clients=clients, status_counts={str(k): v for k, v in codes.items()})


def served(model: Path, texts: list[str], clients: int, seconds: float, *flags: str) -> dict[str, Any]:
    """Start ``fedtext serve`` on ``model``, load it, stop it."""
    from serve.process import ServeProcess

    server = ServeProcess(model, *flags)
    try:
        load(server.url, texts[:32], min(clients, 4), 5)  # warm-up: first batches, allocator, threads
        result = load(server.url, texts, clients, seconds)
        result["batches"] = server.metric("fedtext_batch_size_count")
        result["mean_batch_size"] = round(server.metric("fedtext_batch_size_sum") / max(result["batches"], 1), 2)
    finally:
        server.stop()
    return result


def export_table(model: Path, out: Path, texts: list[str], labels: list[str]) -> list[dict[str, Any]]:
    """Accuracy, agreement, size and latency of PyTorch, ONNX and int8 on the labeled texts."""
    import numpy as np

    from common.inference import OnnxClassifier, TorchClassifier
    from serve.export import export_model

    export_model(model, out, "int8", texts, echo=print)
    reference = TorchClassifier(model)
    rows, ref_pred = [], None
    for name, clf, size in (("PyTorch", reference, sum(p.stat().st_size for p in model.glob("*.safetensors"))),
                            ("ONNX FP32", OnnxClassifier(out, graph="model.onnx"), (out / "model.onnx").stat().st_size),
                            ("ONNX int8", OnnxClassifier(out, graph="model.int8.onnx"),
                             (out / "model.int8.onnx").stat().st_size)):
        clf.logits(texts[:32])  # warm-up
        started = time.perf_counter()
        pred = clf.logits(texts, batch_size=32).argmax(-1)
        per_text = (time.perf_counter() - started) / len(texts)
        single = time.perf_counter()
        for t in texts[:100]:
            clf.logits([t])
        one = (time.perf_counter() - single) / 100
        ref_pred = pred if ref_pred is None else ref_pred
        gold = np.asarray([clf.labels.index(x) for x in labels])
        rows.append({"backend": name, "accuracy": float(np.mean(pred == gold)),
                     "agreement_with_pytorch": float(np.mean(pred == ref_pred)), "mib": round(size / 2**20, 1),
                     "ms_per_text_batched": round(1000 * per_text, 2), "ms_per_text_alone": round(1000 * one, 2)})
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Command: `{result['command']}` ({result['machine']}; finished {result['finished']}).", ""]
    lines += ["### Export (the model's test texts: accuracy, agreement, size, latency)", "",
              "| backend | accuracy | same label as PyTorch | size MiB | ms per text (batches of 32) "
              "| ms per text (one at a time) |", "|---|---|---|---|---|---|"]
    for r in result["export"]:
        lines.append(f"| {r['backend']} | {r['accuracy']:.4f} | {100 * r['agreement_with_pytorch']:.2f}% "
                     f"| {r['mib']} | {r['ms_per_text_batched']} | {r['ms_per_text_alone']} |")
    lines += ["", f"### Serving ({result['clients']} concurrent clients, {result['seconds']:.0f} s each, "
              f"{result['max_length']}-token texts)", "",
              "| run | req/s | x pipeline() | p50 ms | p95 ms | p99 ms | failed | mean batch | statuses |",
              "|---|---|---|---|---|---|---|---|---|"]
    base = result["baseline"]["requests_per_second"]
    for r in [result["baseline"], *result["served"], result["overload"]]:
        lines.append(f"| {r['name']} | {r['requests_per_second']} | {r['requests_per_second'] / base:.2f} "
                     f"| {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['failed']} "
                     f"| {r.get('mean_batch_size', 1)} | {r.get('status_counts', {'200': r['requests']})} |")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], docs: Path) -> Path:
    write_figures(docs, "serving", result)
    return replace_part(docs / "SERVING.md", MARK_BEGIN, MARK_END, markdown(result), "# Serving")


def main(argv: list[str] | None = None) -> int:
    import psutil

    p = argparse.ArgumentParser(prog="python -m serve.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/demo/model", help="A saved model folder (default: the demo's).")
    p.add_argument("--data", default="packaged:rotten_tomatoes", help="Labeled data the model was tested on.")
    p.add_argument("--test-texts", type=int, default=500, help="Held-out texts for the export table (the demo's 500).")
    p.add_argument("--seconds", type=float, default=60, help="Length of each load run.")
    p.add_argument("--clients", type=int, default=16, help="Concurrent clients of the served runs.")
    p.add_argument("--overload-clients", type=int, default=64, help="Clients of the overload run.")
    p.add_argument("--out", default="runs/serving", help="Folder for the exported model.")
    p.add_argument("--docs", default="docs", help="Folder of SERVING.md.")
    args = p.parse_args(argv)
    model = Path(args.model)
    if not (model / "config.json").exists():
        p.error(f"--model '{model}': no saved model (run `make demo` first, or give a run's OUT/model)")
    from common.inference import TorchClassifier

    max_length = TorchClassifier(model).max_length
    texts, labels = load_texts(args.data, args.test_texts, 42)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    result: dict[str, Any] = {
        "command": command_line("serve.bench", argv),
        "machine": f"{psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "clients": args.clients, "seconds": args.seconds, "max_length": max_length, "model": str(model),
    }
    result["export"] = export_table(model, out / "onnx", texts, labels)
    print("export:", json.dumps(result["export"]))
    long_texts = [t for t in texts if len(t.split()) >= 40] or texts
    result["baseline"] = baseline_pipeline(model, long_texts, args.seconds, max_length)
    print("baseline:", json.dumps(result["baseline"]))
    result["served"] = []
    for name, folder in (("fedtext serve, PyTorch", model), ("fedtext serve, ONNX FP32", out / "onnx-fp32"),
                         ("fedtext serve, ONNX int8", out / "onnx")):
        if name.endswith("FP32"):  # the same export without its int8 graph: served as FP32
            shutil.copytree(out / "onnx", folder, ignore=shutil.ignore_patterns("model.int8.onnx"))
        r = served(folder, long_texts, args.clients, args.seconds)
        r["name"] = name
        result["served"].append(r)
        print(f"{name}:", json.dumps(r))
    r = served(out / "onnx", long_texts, args.overload_clients, args.seconds, "--max-queue", "32")
    r["name"] = f"overload: {args.overload_clients} clients, ONNX int8, --max-queue 32"
    result["overload"] = r
    print("overload:", json.dumps(r))
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    path = write_report(result, Path(args.docs))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
