"""Shared fixtures of the core tests: offline Hugging Face, tiny configs, real rows.

The environment variables are set at import, before any test module imports
``datasets`` or ``transformers``: both read them once, at their own import.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from common.config import FedTextConfig  # noqa: E402

TINY = {"num_hidden_layers": 1, "max_length": 32, "batch_size": 8}


@pytest.fixture
def tiny_config() -> Callable[..., FedTextConfig]:
    """Factory of small, fast configs: 1 encoder layer, 32 tokens, batch 8."""

    def make(**changes: Any) -> FedTextConfig:
        return FedTextConfig(**{**TINY, **changes})

    return make


@pytest.fixture(scope="session")
def rt_rows() -> list[dict[str, str]]:
    """All packaged Rotten Tomatoes rows (text, label, movie_name), loaded once."""
    from common.packaged import packaged_dataset

    return packaged_dataset("rotten_tomatoes").to_list()


@pytest.fixture(scope="session")
def sample_rows(rt_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """A few dozen real rows, both labels present, taken deterministically."""
    fresh = [r for r in rt_rows if r["label"] == "fresh"][:18]
    rotten = [r for r in rt_rows if r["label"] == "rotten"][:18]
    rows = [r for pair in zip(fresh, rotten, strict=True) for r in pair]
    return [{"text": r["text"], "label": r["label"]} for r in rows]


def write_csv(path: Path, rows: list[dict[str, Any]], sep: str = ",") -> Path:
    """Rows as a CSV/TSV file with a header (pandas quotes what needs quoting)."""
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as a parquet file."""
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


@pytest.fixture
def data_files(tmp_path: Path, sample_rows: list[dict[str, str]]) -> dict[str, Path]:
    """The same real rows as CSV, TSV, JSONL, parquet and a saved datasets folder."""
    import datasets

    files = {
        "csv": write_csv(tmp_path / "rows.csv", sample_rows),
        "tsv": write_csv(tmp_path / "rows.tsv", sample_rows, sep="\t"),
        "jsonl": write_jsonl(tmp_path / "rows.jsonl", sample_rows),
        "parquet": write_parquet(tmp_path / "rows.parquet", sample_rows),
    }
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(sample_rows).save_to_disk(str(folder))
    files["saved"] = folder
    return files


@pytest.fixture
def flwr_identity() -> Iterator[None]:
    """Flower's task identity, so that Messages can be built outside a runtime."""
    from simulations.inprocess import task_identity

    with task_identity():
        yield


def last_line_of_python(code: str, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; its last line of output.

    For what only a fresh process shows: which modules an import pulls in.
    """
    import sys

    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def received_message(content: Any, message_type: str, dst_node_id: int) -> Any:
    """A Flower Message as a ClientApp receives it: addressed to the node, with an id.

    Needs the ``flwr_identity`` fixture (Messages are built outside a runtime).
    """
    from flwr.app import Message

    msg = Message(content, dst_node_id=dst_node_id, message_type=message_type)
    # The SuperLink assigns these on delivery; Metadata exposes no setter for them.
    msg.metadata.__dict__["_message_id"] = f"instruction-{dst_node_id}"
    msg.metadata.__dict__["_src_node_id"] = 1
    msg.metadata.dst_task_id = 2
    return msg


def run_simulate(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a ``fedtext simulate`` command line on a Ray of its own.

    A killed Ray leaves its address in /tmp/ray/ray_current_cluster, and a bare
    ray.init() connects to it (and fails after a long timeout): the simulation
    must start its own Ray instead.
    """
    stale = Path("/tmp/ray/ray_current_cluster")
    saved = stale.read_text() if stale.exists() else None
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("127.0.0.1:9\n")  # nothing listens there
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        if saved is None:
            stale.unlink(missing_ok=True)
        else:
            stale.write_text(saved)


def pids_with_environ(variable: str) -> list[int]:
    """Live processes (not this one) whose environment holds ``NAME=value``.

    A test marks what it starts with a variable of its own (or a run's
    ``FLWR_HOME``), which every process below inherits, re-parented or not; so
    it finds its leftovers and not those of a test running beside it.
    """
    from common.processes import is_alive

    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        pid = int(entry.name)
        if variable.encode() in environ.split(b"\0") and pid != os.getpid() and is_alive(pid):
            found.append(pid)
    return found
