"""A simulation on a real two-node Ray cluster: both nodes' actors train.

The test makes the cluster the way deploy/README.md tells an operator to, on
this one machine: ``ray start --head`` and a second ``ray start --address``,
one CPU each, so that the two client actors (one CPU each) cannot share a
node. Every train reply names the Ray node that ran it; the run records the
count per node (``clients.ray_nodes`` in metrics.json). Two clients are too few
for SecAgg+, so this run takes the plain path; tests/test_simulation.py checks
the placement through the SecAgg+ stages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from simulations.ray_cluster import RayNode
from tests.conftest import run_simulate

pytestmark = pytest.mark.slow


def test_both_nodes_of_a_two_node_cluster_train(tmp_path: Path) -> None:
    head = RayNode(tmp_path / "head.log", num_cpus=1).start()
    try:
        worker = RayNode(tmp_path / "worker.log", num_cpus=1, head=head.address).start()
        try:
            out = tmp_path / "run"
            proc = run_simulate([
                sys.executable, "-m", "simulations.cli", "simulate", "--ray-address", head.address,
                "--data", "packaged:bbc_news", "--clients", "2", "--client-cpus", "1", "--rounds", "1",
                "--num-hidden-layers", "1", "--max-length", "32", "--max-examples", "120",
                "--max-test-examples", "40", "--local-steps", "2", "--freeze", "head", "--no-secagg", "--seed", "7",
                "--out", str(out),
            ], timeout=600)
            assert proc.returncode == 0, f"simulate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        finally:
            worker.stop()
    finally:
        head.stop()
    doc = json.loads((out / "metrics.json").read_text())
    placements = [r["clients"]["ray_nodes"] for r in doc["rounds"] if r["round"] >= 1]
    # Two actors, one per node: one client trained on each node.
    assert len(placements) == 1 and sorted(placements[0].values()) == [1, 1], placements
