"""server/superlink.py: what ``flwr run`` packs into the FAB that every node installs."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import tomllib
from flwr.cli.build import build_fab_from_disk

from server import superlink as superlink_module
from server.superlink import APP_PACKAGES, follow_run, stage_app
from tests.conftest import last_line_of_python

ROOT = Path(__file__).resolve().parents[1]


def test_the_staged_app_holds_the_apps_packages_only(tmp_path: Path) -> None:
    staged = stage_app(tmp_path / "app")
    (staged / "common" / "__pycache__").mkdir(exist_ok=True)  # a stale cache is not copied twice
    stage_app(tmp_path / "app")  # staging again replaces the copy
    files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert "pyproject.toml" in files
    assert {f.split("/")[0] for f in files} == {"pyproject.toml", *APP_PACKAGES}
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    assert (staged / "client" / "app.py").read_bytes() == (ROOT / "client" / "app.py").read_bytes()

    # The same app tables as the checkout's pyproject.toml, written without it (an installed fedtext has none).
    staged_toml = tomllib.loads((staged / "pyproject.toml").read_text())
    checkout_toml = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert staged_toml["tool"]["flwr"] == checkout_toml["tool"]["flwr"]
    assert staged_toml["project"]["version"] == checkout_toml["project"]["version"]

    # Flower packs it as it would the checkout, without the docs, figures and tests.
    fab = zipfile.ZipFile(BytesIO(build_fab_from_disk(staged)))
    names = fab.namelist()
    assert "client/app.py" in names and "server/app.py" in names and "pyproject.toml" in names
    assert not any(n.startswith(("docs/", "tests/", "simulations/", "runs/")) for n in names)


def test_an_installed_fedtext_stages_its_app_without_a_pyproject(tmp_path: Path) -> None:
    """pip install . puts the packages in site-packages with no pyproject.toml beside them (the container image)."""
    installed = tmp_path / "site-packages"
    for package in APP_PACKAGES:
        shutil.copytree(ROOT / package, installed / package, ignore=shutil.ignore_patterns("__pycache__"))
    staged = stage_app(tmp_path / "app", source=installed)
    fab = zipfile.ZipFile(BytesIO(build_fab_from_disk(staged)))
    assert "pyproject.toml" in fab.namelist() and "server/app.py" in fab.namelist()


def test_the_apps_import_nothing_of_fedtext_outside_the_staged_packages() -> None:
    # Otherwise a node would fail to load the app from the FAB: every module of
    # the staged packages, imported, pulls in no other fedtext package.
    code = ("import importlib, json, pkgutil, sys\n"
            f"for package in {APP_PACKAGES!r}:\n"
            "    root = importlib.import_module(package)\n"
            "    for info in pkgutil.walk_packages(root.__path__, package + '.'):\n"
            "        importlib.import_module(info.name)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    loaded = set(json.loads(last_line_of_python(code)))
    ours = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert loaded & ours <= set(APP_PACKAGES), loaded & ours


class _Link:
    """Stands in for a LocalSuperLink: only the run's status, which Flower keeps, and its app's liveness."""

    def __init__(self, status: str, app_alive: bool = False) -> None:
        self.status, self.asked, self.alive = status, 0, app_alive

    def app_alive(self) -> bool:
        return self.alive

    def run_status(self, run_id: int) -> tuple[str, str]:
        self.asked += 1
        return self.status, "details from Flower"


def test_a_run_is_over_once_the_app_recorded_it_and_told_the_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(superlink_module, "POLL_S", 0.0)
    metrics = tmp_path / "metrics.json"
    seen: list[int] = []
    metrics.write_text(json.dumps({"status": "completed", "clients_told": 3, "rounds": [{"round": 0}, {"round": 1}]}))
    link = _Link("running")  # Flower is still shutting its engine down
    assert follow_run(link, 1, metrics, lambda e: seen.append(e["round"])) == ("finished:completed", "")
    assert seen == [0, 1] and link.asked == 0

    metrics.write_text(json.dumps({"status": "failed: ValueError: bad", "clients_told": 0, "rounds": []}))
    assert follow_run(_Link("running"), 1, metrics, seen.append) == ("finished:failed", "failed: ValueError: bad")


def test_a_run_whose_app_recorded_nothing_ends_with_flowers_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ServerApp that could not even start writes no metrics.json: Flower's status tells.
    monkeypatch.setattr(superlink_module, "POLL_S", 0.0)
    monkeypatch.setattr(superlink_module, "STATUS_EVERY", 0.0)
    link = _Link("finished:failed")
    assert follow_run(link, 1, tmp_path / "metrics.json", print) == ("finished:failed", "details from Flower")
    assert link.asked == 1
    # Completed but not yet told: the notice is still going out, so it waits for Flower.
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"status": "completed", "rounds": []}))
    assert follow_run(_Link("finished:completed"), 1, metrics, print) == ("finished:completed", "details from Flower")


def test_flower_is_not_asked_while_the_apps_process_is_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each `flwr ls` costs 2-3 CPU-seconds, taken from the clients' training.
    monkeypatch.setattr(superlink_module, "POLL_S", 0.0)
    monkeypatch.setattr(superlink_module, "STATUS_EVERY", 0.0)
    metrics = tmp_path / "metrics.json"
    link = _Link("running", app_alive=True)

    def next_round(entry: dict) -> None:  # the app records the next round once this one was seen
        n = entry["round"] + 1
        status = "completed" if n == 5 else "running"
        metrics.write_text(json.dumps({"status": status, "clients_told": 1,
                                       "rounds": [{"round": r} for r in range(n + 1)]}))

    metrics.write_text(json.dumps({"status": "running", "rounds": [{"round": 0}]}))
    assert follow_run(link, 1, metrics, next_round) == ("finished:completed", "")
    assert link.asked == 0
    # An app process that lives on (hung) after Flower failed its run is still asked about, less often.
    monkeypatch.setattr(superlink_module, "ALIVE_STATUS_EVERY", 0.0)
    metrics.write_text(json.dumps({"status": "running", "rounds": [{"round": 0}]}))
    hung = _Link("finished:failed", app_alive=True)
    assert follow_run(hung, 1, metrics, print) == ("finished:failed", "details from Flower")


def test_the_superlinks_app_is_found_among_its_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from server.superlink import LocalSuperLink

    link = LocalSuperLink(tmp_path)
    assert not link.app_alive()  # not started
    # A process tree like Flower's: SuperLink > SuperExec > flwr-serverapp.
    tree = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import subprocess, sys; subprocess.run([sys.executable, \"-c\", \"import time; time.sleep(60)\", "
            "\"flwr-serverapp\"])'])")
    link.process = subprocess.Popen([sys.executable, "-c", tree])
    try:
        deadline = time.monotonic() + 30
        while not link.app_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert link.app_alive()
    finally:
        superlink_module.stop_process_group(link.process, grace=2)
    assert not link.app_alive()


def test_flower_processes_look_for_work_ten_times_a_second(tmp_path: Path) -> None:
    from common.processes import flower_env

    assert flower_env(tmp_path)["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.1"


def test_flower_processes_send_no_telemetry_unless_the_user_asked(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from common.processes import TELEMETRY_ENV, flower_env

    monkeypatch.delenv(TELEMETRY_ENV, raising=False)
    assert flower_env(tmp_path)[TELEMETRY_ENV] == "0"
    monkeypatch.setenv(TELEMETRY_ENV, "1")
    assert flower_env(tmp_path)[TELEMETRY_ENV] == "1"
