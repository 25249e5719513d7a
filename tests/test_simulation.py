"""One real federation: `fedtext simulate` on Flower's Ray engine, secure aggregation on.

A 1-layer cut of the packaged all-MiniLM-L6-v2, 3 clients holding real BBC News
articles (5 topics), 2 rounds. It must learn (well above chance and above its
own round 0), write a complete metrics.json, keep the SecAgg+ upload at about
4 bytes per trainable parameter, and leave a model that transformers' pipeline
loads. It takes a few minutes on 2 cores: most of it is Ray and per-actor imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_simulate

pytestmark = pytest.mark.slow

ROUNDS = 2
CLIENTS = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    cmd = [
        sys.executable, "-m", "simulations.cli", "simulate",
        "--data", "packaged:bbc_news", "--clients", str(CLIENTS), "--partition", "iid",
        "--rounds", str(ROUNDS), "--num-hidden-layers", "1", "--max-length", "32",
        "--max-examples", "330", "--max-test-examples", "150", "--batch-size", "16",
        "--local-epochs", "2", "--lr", "2e-3", "--seed", "7", "--out", str(out),
    ]
    proc = run_simulate(cmd)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0, f"simulate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "round 2/2" in proc.stdout  # per-round progress was shown
    return out


def test_federation_learns(run_dir: Path) -> None:
    doc = json.loads((run_dir / "metrics.json").read_text())
    assert doc["status"] == "completed"
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    first, last = rounds[0]["central"], rounds[-1]["central"]
    # 5 balanced-ish topics: chance is 0.2. An untrained head sits near it.
    assert last["accuracy"] >= 0.45, rounds
    assert last["accuracy"] >= first["accuracy"] + 0.2, rounds
    assert last["loss"] < first["loss"]
    for entry in rounds[1:]:
        assert entry["clients"]["trained"] == CLIENTS
        # One local Ray node trained them all; its id came back through the SecAgg+ stage-0 reply.
        assert list(entry["clients"]["ray_nodes"].values()) == [CLIENTS], entry["clients"]
        assert entry["clients"]["evaluated"] == CLIENTS
        assert entry["clients"]["evaluate"]["num_examples"] > 0
        assert entry["seconds"] > 0


def test_secure_upload_costs_about_four_bytes_per_parameter(run_dir: Path) -> None:
    doc = json.loads((run_dir / "metrics.json").read_text())
    assert doc["config"]["secagg"] is True
    trainable = doc["model"]["trainable_params"]
    per_client = doc["rounds"][1]["bytes_up"] / CLIENTS
    # uint32 masked vector (+1 element for the weight) plus keys, shares, headers
    assert 4.0 <= per_client / trainable <= 4.05, per_client / trainable


def test_saved_model_loads_in_pipeline(run_dir: Path) -> None:
    """In a fresh interpreter, as a user would: the folder carries its mean-pooling modeling code."""
    labels = json.loads((run_dir / "model" / "labels.json").read_text())
    assert labels == ["business", "entertainment", "politics", "sports", "tech"]
    code = (
        "import json, sys; from transformers import pipeline; "
        f"clf = pipeline('text-classification', model={str(run_dir / 'model')!r}, trust_remote_code=True); "
        "print(json.dumps(clf(['Shares fell sharply as the bank reported lower quarterly profits.'])))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[0]["label"] in labels
    assert 0.0 <= out[0]["score"] <= 1.0


def test_run_folder_keeps_flower_state_and_logs(run_dir: Path) -> None:
    assert (run_dir / ".flwr" / "config.toml").exists()
    assert (run_dir / "run_config.toml").exists()
    assert "SecAgg+" in (run_dir / "server.log").read_text()
    # The data was partitioned once, before the run; each client read its own share.
    assert (run_dir / "shares" / "manifest.json").exists() and (run_dir / "shares" / "0").is_dir()


def test_evaluate_and_predict_use_the_saved_model(run_dir: Path, tmp_path: Path) -> None:
    from common.packaged import packaged_dataset
    from simulations.cli import main

    rows = packaged_dataset("bbc_news").shuffle(seed=1).select(range(40))
    data = tmp_path / "eval.csv"
    rows.select_columns(["text", "label"]).to_csv(str(data), index=False)
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(run_dir / "model"), "--data", str(data),
                 "--max-length", "32", "--out", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["num_examples"] == 40
    assert sum(map(sum, report["confusion_matrix"])) == 40
    assert set(report["per_class"]) == set(report["labels"])
    assert (out / "confusion.png").stat().st_size > 0

    texts = tmp_path / "texts.txt"
    texts.write_text("The striker scored twice in the cup final.\nNew chips make phones faster.\n")
    predictions = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(run_dir / "model"), "--file", str(texts),
                 "--out", str(predictions)]) == 0
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [row["text"] for row in lines] == texts.read_text().splitlines()
    assert all(row["label"] in report["labels"] and 0 <= row["score"] <= 1 for row in lines)


def test_run_folder_has_plots(run_dir: Path) -> None:
    assert (run_dir / "rounds.png").stat().st_size > 0
    assert (run_dir / "confusion.png").stat().st_size > 0
