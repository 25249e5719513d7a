"""Many simulated clients, a sample of them per round: a short real run on Flower's Ray engine.

100 virtual clients hold 4-5 rows of the full packaged Rotten Tomatoes corpus
each (a 1-layer model, short texts); 5% train and 5% evaluate per round with
secure aggregation on. It checks that sampling, SecAgg+ among the sampled
clients, the saved shares and the run's end (a notice to all 100 nodes, under
a second here) work at this size. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLIENTS = 100


def test_a_hundred_clients_with_five_sampled_a_round(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", "--data", "packaged:rotten_tomatoes",
           "--clients", str(CLIENTS), "--partition", "iid", "--fraction-train", "0.05",
           "--fraction-evaluate", "0.05", "--rounds", "2", "--num-hidden-layers", "1", "--max-length", "32",
           "--max-examples", "450", "--max-test-examples", "100", "--local-steps", "1", "--freeze", "head",
           "--seed", "7", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"simulate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    doc = json.loads((out / "metrics.json").read_text())
    rounds = [r for r in doc["rounds"] if r["round"] >= 1]
    assert [r["clients"]["trained"] for r in rounds] == [5, 5]
    assert [r["clients"]["evaluated"] for r in rounds] == [5, 5]
    assert len(list((out / "shares").glob("[0-9]*"))) == CLIENTS
    log = (out / "server.log").read_text()
    assert f"run completed: told {CLIENTS} of {CLIENTS} connected clients" in log, log[-2000:]
