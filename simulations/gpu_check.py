"""GPU paths, checked on a machine that has one: ``python -m simulations.gpu_check --out DIR``.

1. A client training step on CUDA: parameters placed on the GPU, forward under
   bf16 (or fp16 + loss scaling) autocast, steps/s against the CPU in the same
   process, peak GPU memory.
2. A 2-client ``fedtext simulate`` with ``--client-gpus 0.5``: Ray gives each
   client half a GPU and the clients report that they trained on CUDA.

Writes ``DIR/gpu_check.json`` and prints it. On a machine without CUDA it says
so and exits 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def step_timing(device_name: str, steps: int) -> dict:
    """Seconds per optimizer step of the 6-layer packaged MiniLM, batch 32 x 64 tokens."""
    import torch

    from common.config import FedTextConfig
    from common.model import build_model, load_tokenizer
    from common.packaged import packaged_dataset
    from common.training import train_model

    cfg = FedTextConfig(batch_size=32, max_length=64, local_steps=steps, warmup_ratio=0.0)
    rows = packaged_dataset("rotten_tomatoes").select(range(32 * steps))
    rows = rows.map(lambda r: {"label": int(r["label"] == "rotten")})
    model = build_model(cfg, ["fresh", "rotten"])
    device = torch.device(device_name)
    seen: dict[str, str] = {}
    # What dtype a Linear layer really computes in tells whether autocast is on.
    def record_dtype(module, inputs, output) -> None:  # noqa: ANN001 - torch hook signature
        seen.setdefault("dtype", str(output.dtype))

    hook = model.classifier.register_forward_hook(record_dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_model(model, rows.select(range(32)), load_tokenizer(cfg), cfg.replace(local_steps=1), device, seed=0)
    start = time.perf_counter()
    result = train_model(model, rows, load_tokenizer(cfg), cfg, device, seed=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    hook.remove()
    return {
        "device": device_name,
        "steps": result.steps,
        "seconds_per_step": seconds / result.steps,
        "params_on": str(next(model.parameters()).device),
        "classifier_output_dtype": seen.get("dtype"),
        "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else 0.0,
        "final_loss": result.loss,
    }


def gpu_simulation(out: Path) -> dict:
    """2 clients sharing one GPU through Ray's resources."""
    run = out / "sim"
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", "--clients", "2", "--no-secagg",
           "--client-gpus", "0.5", "--rounds", "1", "--max-examples", "640", "--max-test-examples", "256",
           "--batch-size", "32", "--freeze", "none", "--lr", "1e-4", "--out", str(run)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540)
    doc = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    last = (doc.get("rounds") or [{}])[-1]
    return {
        "exit_code": proc.returncode,
        "wall_seconds": time.perf_counter() - start,
        "clients_trained": last.get("clients", {}).get("trained"),
        "share_of_clients_on_gpu": last.get("clients", {}).get("train", {}).get("train-on-gpu"),
        "central": last.get("central"),
        "tail": proc.stdout[-1500:] + proc.stderr[-1500:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_check"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    report: dict = {"cuda_available": torch.cuda.is_available(), "torch": torch.__version__}
    if not torch.cuda.is_available():
        report["note"] = "no CUDA device: nothing measured"
    else:
        report["gpu"] = torch.cuda.get_device_name(0)
        report["bf16_supported"] = torch.cuda.is_bf16_supported()
        report["cuda_step"] = step_timing("cuda", args.steps)
        report["cpu_step"] = step_timing("cpu", 3)
        report["speedup"] = report["cpu_step"]["seconds_per_step"] / report["cuda_step"]["seconds_per_step"]
        report["simulation"] = gpu_simulation(out)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
