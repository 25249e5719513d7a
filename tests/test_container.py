"""deploy/compose.yaml for real: the image's server and three clients in containers, TLS, node auth, SecAgg+.

Runs where a container engine with a Compose CLI answers (docker with
``docker compose``, or podman with ``podman-compose``) and the image exists
(``FEDTEXT_IMAGE``, default ``fedtext:latest``); skipped with the reason where
not. The test does not build the image: that takes minutes and the build
machine's package index (deploy/README.md, "Docker Compose").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import write_csv
from tests.test_deploy_files import compose_command

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
IMAGE = os.environ.get("FEDTEXT_IMAGE", "fedtext:latest")
# Small and quick: one round of a one-layer model; what is checked is the deployment, not the accuracy.
SERVER_FLAGS = ["--rounds", "1", "--num-hidden-layers", "1", "--max-length", "32", "--batch-size", "8",
                "--min-local-steps", "2", "--round-timeout", "300"]
CLIENT_FLAGS = ["--threads", "1"]


def engine_and_compose() -> tuple[str, list[str]] | None:
    """The container engine and its Compose CLI, if this machine has both."""
    if (cli := compose_command()) is not None:  # Docker's
        return "docker", cli
    if shutil.which("podman") and shutil.which("podman-compose"):
        return "podman", ["podman-compose"]
    return None


def quick_compose(image: str) -> dict[str, Any]:
    """deploy/compose.yaml with the built image and the quick flags above (the services, mounts and TLS unchanged)."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in doc["services"].items():
        service.pop("build", None)  # the image exists; never build inside a test
        service["image"] = image
        service["command"] = [*service["command"], *(SERVER_FLAGS if name == "server" else CLIENT_FLAGS)]
    return doc


def write_federation_files(folder: Path, rows: list[dict[str, str]]) -> dict[str, str]:
    """Keys for 3 clients and each container's data folder; return the environment compose.yaml reads."""
    from deploy.certs import make_certificates

    certs, data = folder / "certs", folder / "data"
    make_certificates(certs, ["server", "localhost"], clients=3)
    files = {"server/test.csv": rows[:40], **{f"client-{i}/client.csv": rows[40 * i:40 * (i + 1)] for i in (1, 2, 3)}}
    for name, share in files.items():
        (data / name).parent.mkdir(parents=True)
        write_csv(data / name, share)
    if os.getuid() == 0:  # the image runs as UID 1000 and the keys are 0600
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, 1000, 1000)
    return {**os.environ, "FEDTEXT_CERTS": str(certs), "FEDTEXT_DATA": str(data)}


def containers(engine: str, project: str) -> dict[str, tuple[str, int]]:
    """service -> (container id, exit code) of the project's containers."""
    ids = subprocess.run([engine, "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    found = {}
    for line in subprocess.run(
        [engine, "inspect", "--format", '{{index .Config.Labels "com.docker.compose.service"}} {{.Id}} '
         "{{.State.ExitCode}}", *ids], capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines():
        service, cid, code = line.split()
        found[service] = (cid, int(code))
    return found


def test_the_compose_federation_runs_in_containers(tmp_path: Path, rt_rows: list[dict[str, str]]) -> None:
    found = engine_and_compose()
    if found is None:
        pytest.skip("no container engine with a Compose CLI here (docker with `docker compose`, or podman "
                    "with podman-compose)")
    engine, compose = found
    if subprocess.run([engine, "image", "inspect", IMAGE], capture_output=True, timeout=60).returncode != 0:
        pytest.skip(f"no image {IMAGE} here: build it with `{engine} build -f deploy/Dockerfile -t {IMAGE} .` "
                    "(deploy/README.md); the test does not build it")
    if os.getuid() not in (0, 1000):
        pytest.skip("the image runs as UID 1000 and the keys must belong to it: run as root or as UID 1000")

    fresh, rotten = ([r for r in rt_rows if r["label"] == label][:80] for label in ("fresh", "rotten"))
    rows = [{"text": r["text"], "label": r["label"]} for pair in zip(fresh, rotten, strict=True) for r in pair]
    env = write_federation_files(tmp_path, rows)
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(yaml.safe_dump(quick_compose(IMAGE), sort_keys=False))
    project = f"fedtext-test-{os.getpid()}"
    command = [*compose, "-p", project, "-f", str(compose_file)]
    try:
        up = subprocess.run([*command, "up"], capture_output=True, text=True, env=env, timeout=900)
        ran = containers(engine, project)
        metrics = tmp_path / "metrics.json"
        copied = subprocess.run([engine, "cp", f"{ran['server'][0]}:/runs/server/metrics.json", str(metrics)],
                                capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run([*command, "down", "-v"], capture_output=True, env=env, timeout=300)

    log = up.stdout[-4000:] + up.stderr[-4000:]
    assert {s: code for s, (_, code) in ran.items()} == {"server": 0, "client-1": 0, "client-2": 0,
                                                         "client-3": 0}, log
    assert copied.returncode == 0, copied.stderr
    doc = json.loads(metrics.read_text())
    assert doc["status"] == "completed", log
    last = doc["rounds"][-1]
    assert last["round"] == 1 and last["clients"]["trained"] == 3  # every container's client took part
    assert 0.0 <= last["central"]["accuracy"] <= 1.0
    assert (up.stdout + up.stderr).count("took part in 1 run") == 3, log  # each client's own summary line
