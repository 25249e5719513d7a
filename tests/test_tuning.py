"""``fedtext tune``: the search space, the validation-only objective, pruning, resume, outputs.

The fast tests check each piece; the real studies run tiny trials (1-layer
MiniLM, BBC News topics, a few hundred rows): centralized trials in-process,
and one federated study on the shared SuperLink and Ray head, with one trial
pruned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import FedTextConfig, add_config_arguments, config_from_args, read_config_file
from common.errors import ConfigError
from simulations.tuning.space import build_space, parse_param_flag
from simulations.tuning.study import (
    TuneOptions,
    check_base,
    check_options,
    load_study,
    make_pruner,
    open_storage,
    requeue_interrupted,
    study_fingerprint,
    trial_config,
    tune,
)
from simulations.tuning.trials import objective_value
from tests.conftest import pids_with_environ

REPO = Path(__file__).resolve().parents[1]
# A small, fast base: 1 encoder layer, BBC topics (5 labels), a few hundred rows.
TINY = dict(num_hidden_layers=1, max_length=32, batch_size=16, data="packaged:bbc_news",
            max_examples=300, max_test_examples=80, clients=3, rounds=2, freeze="bottom:0",
            client_eval_fraction=0.2, min_local_steps=0)  # a few steps a round: tuning, not the recipe


def tiny(**changes: object) -> FedTextConfig:
    return FedTextConfig(**{**TINY, **changes})


# --- the search space --------------------------------------------------------------------


def test_param_flags_of_every_kind() -> None:
    lr = parse_param_flag("lr=1e-5..1e-3:log")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-5, 1e-3, True)
    batch = parse_param_flag("batch-size=8..32:step=8")
    assert (batch.kind, batch.grid()) == ("int", [8, 16, 24, 32])
    strategy = parse_param_flag("strategy=fedavg,fedadam")
    assert (strategy.kind, strategy.choices) == ("categorical", ("fedavg", "fedadam"))
    assert parse_param_flag("secagg=true,false").choices == (True, False)
    assert parse_param_flag("local-epochs=0.5,1,2").choices == (0.5, 1.0, 2.0)
    assert lr.grid() is None  # continuous


def test_space_file_matches_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('[lr]\nlow = 1e-5\nhigh = 1e-3\nlog = true\n\n[strategy]\nchoices = ["fedavg", "fedadam"]\n')
    from_file = build_space(FedTextConfig(), [], str(path))
    from_flags = build_space(FedTextConfig(), ["lr=1e-5..1e-3:log", "strategy=fedavg,fedadam"], None)
    assert from_file.to_json() == from_flags.to_json()


def test_default_space_is_centred_on_the_policys_lr() -> None:
    space = build_space(FedTextConfig(freeze="head"), [], None)
    lr = next(p for p in space.params if p.key == "lr")
    assert lr.log and lr.low < 1e-2 < lr.high  # head's default peak lr is 1e-2
    assert {p.key for p in space.params} == {"lr", "batch-size", "local-epochs"}


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("learning-rate=1e-5..1e-3", "unknown config key 'learning-rate'"),
        ("lr=1e-3..1e-5", "empty or inverted"),
        ("lr=1e-3..1e-3", "empty or inverted"),
        ("lr=abc..1e-3", "'abc' is not a number"),
        ("lr=0..1e-3:log", "log range needs low > 0"),
        ("lr=1e-5..1e-3:cubic", "unknown option ':cubic'"),
        ("batch-size=8..32:step=0", "step 0 must be in"),
        ("batch-size=8.5..32", "whole numbers"),
        ("data=a.csv,b.csv", "'data' cannot be tuned"),
        ("client-eval-fraction=0.1,0.2", "cannot be tuned"),
        ("freeze=1..2", "not numeric; give it choices"),
        ("lr", "expected KEY=LOW..HIGH"),
    ],
)
def test_bad_param_flag_is_one_line(flag: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_space(FedTextConfig(), [flag], None)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_bound_the_config_refuses_names_the_key() -> None:
    with pytest.raises(ConfigError, match="strategy in {fedavg, nope}.*'strategy'"):
        build_space(FedTextConfig(), ["strategy=fedavg,nope"], None)
    with pytest.raises(ConfigError, match="lr in .*'lr'"):
        build_space(FedTextConfig(), ["lr=0.5..2"], None)
    with pytest.raises(ConfigError, match="'lr' is given twice"):
        build_space(FedTextConfig(), ["lr=1e-4..1e-3", "lr=1e-5..1e-4"], None)


def test_grid_needs_discrete_parameters() -> None:
    space = build_space(FedTextConfig(), ["lr=1e-4,1e-3", "batch-size=8..16:step=8"], None)
    assert space.grid() == {"lr": [1e-4, 1e-3], "batch-size": [8, 16]}
    with pytest.raises(ConfigError, match="'lr' is continuous"):
        build_space(FedTextConfig(), ["lr=1e-4..1e-3"], None).grid()


# --- options, the objective, the trial's config ------------------------------------------


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"sampler": "annealing"}, "--sampler"),
        ({"pruner": "sometimes"}, "--pruner"),
        ({"pruner": "threshold:x"}, "--pruner"),
        ({"objective": "precision"}, "--objective"),
        ({"trials": 0}, "--trials"),
        ({"storage": "postgresql://db/study"}, "--storage"),
    ],
)
def test_bad_search_flag_is_one_line(tmp_path: Path, changes: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_options(TuneOptions(out=tmp_path, **changes))


def test_storage_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--storage"):
        open_storage(blocker / "study.db")


def test_objective_needs_held_out_rows(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client-eval-fraction"):
        check_base(tiny(client_eval_fraction=0.0), TuneOptions(out=tmp_path))
    with pytest.raises(ConfigError, match="fraction-evaluate"):
        check_base(tiny(fraction_evaluate=0.5), TuneOptions(out=tmp_path))


def test_objective_is_read_from_the_held_out_rows_never_the_test_set() -> None:
    entry = {"round": 2, "central": {"accuracy": 0.99}, "clients": {"evaluate": {"accuracy": 0.61, "loss": 0.9}}}
    assert objective_value(entry, "accuracy") == 0.61
    assert objective_value(entry, "loss") == 0.9
    assert objective_value({"round": 1, "central": {"accuracy": 0.99}, "clients": {}}, "accuracy") is None


def test_trial_config_leaves_the_test_set_alone(tmp_path: Path) -> None:
    cfg = trial_config(tiny(), {"lr": 1e-3, "batch-size": 8}, tmp_path / "trial-000")
    assert (cfg.lr, cfg.batch_size, cfg.central_eval, cfg.out) == (1e-3, 8, False, str(tmp_path / "trial-000"))


def test_threshold_pruner_follows_the_objectives_direction(tmp_path: Path) -> None:
    import optuna

    assert isinstance(make_pruner(TuneOptions(out=tmp_path, pruner="threshold:0.4")), optuna.pruners.ThresholdPruner)
    loss = make_pruner(TuneOptions(out=tmp_path, pruner="threshold:2", objective="loss"))
    assert loss._upper == 2.0


# --- the stored study --------------------------------------------------------------------


def _options(tmp_path: Path, **changes: object) -> TuneOptions:
    return TuneOptions(out=tmp_path, storage=str(tmp_path / "study.db"), **changes)


def test_stored_study_with_another_space_is_refused_and_kept(tmp_path: Path) -> None:
    base = tiny()
    space_a = build_space(base, ["lr=1e-4..1e-3:log"], None)
    options = _options(tmp_path)
    storage = open_storage(options.storage_path())
    study = load_study(storage, options, study_fingerprint(base, space_a, options), space_a)
    study.add_trial(__import__("optuna").trial.create_trial(params={"lr": 3e-4}, value=0.7,
                    distributions={"lr": __import__("optuna").distributions.FloatDistribution(1e-4, 1e-3, log=True)}))
    space_b = build_space(base, ["lr=1e-5..1e-3:log"], None)
    with pytest.raises(ConfigError, match="another space"):
        load_study(storage, options, study_fingerprint(base, space_b, options), space_b)
    with pytest.raises(ConfigError, match="another base.*'rounds'"):
        load_study(storage, options, study_fingerprint(base.replace(rounds=5), space_a, options), space_a)
    # Nothing stored was lost.
    again = load_study(storage, options, study_fingerprint(base, space_a, options), space_a)
    assert [t.value for t in again.trials] == [0.7]


def test_interrupted_trial_is_failed_and_queued_again(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    base = tiny()
    space = build_space(base, ["lr=1e-4..1e-3:log"], None)
    options = _options(tmp_path)
    study = load_study(open_storage(options.storage_path()), options, study_fingerprint(base, space, options), space)
    trial = study.ask()
    params = space.suggest(trial)  # a tuner died here, with the trial RUNNING
    lines: list[str] = []
    requeue_interrupted(study, lines.append)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == {} and study.trials[1].system_attrs["fixed_params"] == params
    assert "queued again" in lines[0]


def test_best_toml_is_taken_by_config_and_flags_win(tmp_path: Path) -> None:
    import argparse

    from simulations.tuning.report import write_best_toml

    path = write_best_toml(tiny(), {"lr": 0.00042, "batch-size": 8}, tmp_path / "best.toml")
    values = read_config_file(path)
    assert values["lr"] == 0.00042 and values["central-eval"] is True and "out" not in values
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--config", str(path), "--batch-size", "32"]))
    assert (cfg.lr, cfg.batch_size, cfg.data) == (0.00042, 32, "packaged:bbc_news")
    # A centralized command takes the training keys and says which others it left out.
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, FedTextConfig.keys("training"))
    said: list[str] = []
    cfg = config_from_args(parser.parse_args(["--config", str(path)]), echo=said.append)
    assert cfg.lr == 0.00042 and "strategy" in said[0]


# --- real studies -----------------------------------------------------------------------


def _tune_args(out: Path, *extra: str) -> list[str]:
    args = ["tune", "--out", str(out)]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + list(extra)


def test_centralized_study_prunes_reports_and_evaluates_the_best_once(tmp_path: Path) -> None:
    out = tmp_path / "study"
    options = TuneOptions(out=out, trials=3, sampler="grid", pruner="threshold:0.4",
                          params=["lr=1e-7,2e-3,4e-3"], centralized=True)
    lines: list[str] = []
    assert tune(tiny(), options, echo=lambda *a, **k: lines.append(" ".join(map(str, a)))) == 0
    rows = json.loads((out / "trials.json").read_text())
    by_lr = {r["param:lr"]: r for r in rows}
    # lr 1e-7 cannot learn BBC topics in a round: the threshold pruner stops it after round 1.
    assert by_lr[1e-7]["state"] == "pruned" and by_lr[1e-7]["rounds"] == 1
    done = [r for r in rows if r["state"] == "complete"]
    assert len(done) == 2 and all(r["rounds"] == 2 for r in done)
    for r in rows:  # trials never looked at the test set
        doc = json.loads((Path(r["folder"]) / "metrics.json").read_text())
        assert all(not e["central"] for e in doc["rounds"])
    best = json.loads((out / "best.json").read_text())
    assert best["validation"]["value"] == max(r["value"] for r in done)
    assert 0 < best["test"]["accuracy"] <= 1 and best["test"]["num_examples"] == 80
    assert (Path(best["folder"]) / "model" / "config.json").exists()
    assert all(not (Path(r["folder"]) / "model").exists() for r in done if r["folder"] != best["folder"])
    for name in ("trials.csv", "history.png", "importance.png", "rounds.png", "best.toml", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert FedTextConfig.from_mapping(read_config_file(out / "best.toml")).lr == best["params"]["lr"]
    assert any("pruned after round 1" in line for line in lines)


def test_killed_study_resumes_without_losing_a_completed_trial(tmp_path: Path) -> None:
    from common.processes import stop_process_group

    out = tmp_path / "study"
    args = [sys.executable, "-m", "simulations.cli", *_tune_args(out, "--centralized", "--trials", "3",
                                                                 "--param", "lr=5e-4..4e-3:log")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    completed = []
    try:
        while time.monotonic() < deadline:  # wait for one completed trial and the next one running
            try:
                rows = json.loads((out / "trials.json").read_text())
            except (OSError, ValueError):
                rows = []
            completed = [r for r in rows if r["state"] == "complete"]
            if completed and (out / "trials" / "trial-001" / "metrics.json").exists():
                break
            time.sleep(0.5)
        assert completed, "no trial completed in time"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop_process_group(first, grace=1.0)
    resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "was interrupted; its parameters are queued again" in resumed.stdout
    rows = {r["number"]: r for r in json.loads((out / "trials.json").read_text())}
    assert rows[0]["state"] == "complete" and rows[0]["value"] == completed[0]["value"]
    assert rows[1]["state"] == "fail"
    finished = [r for r in rows.values() if r["state"] in ("complete", "pruned")]
    assert len(finished) == 3


def test_optuna_dashboard_reads_the_study(tmp_path: Path) -> None:
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import httpx
    import optuna
    import optuna_dashboard

    storage = open_storage(tmp_path / "study.db")
    study = optuna.create_study(study_name="fedtext", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-3), n_trials=2)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        studies = httpx.get(f"http://127.0.0.1:{server.server_port}/api/studies", timeout=30).json()
    finally:
        server.shutdown()
    assert [s["study_name"] for s in studies["study_summaries"]] == ["fedtext"]


@pytest.mark.slow
def test_federated_study_on_one_superlink_and_ray_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real study: 2 federated trials on the shared SuperLink and Ray head, one pruned."""
    out = tmp_path / "study"
    # Every process the study starts inherits this variable (SuperLink, Ray head,
    # ServerApp, actors), and no other test's processes have it.
    mark = f"{tmp_path.name}-{os.getpid()}"
    monkeypatch.setenv("FEDTEXT_TEST_STUDY", mark)
    options = TuneOptions(out=out, trials=2, sampler="grid", pruner="threshold:0.4", params=["lr=1e-7,4e-3"])
    assert tune(tiny(), options, echo=lambda *a, **k: None) == 0
    rows = {r["param:lr"]: r for r in json.loads((out / "trials.json").read_text())}
    assert rows[1e-7]["state"] == "pruned" and rows[1e-7]["rounds"] == 1
    assert rows[4e-3]["state"] == "complete" and rows[4e-3]["rounds"] == 2
    best = json.loads((out / "best.json").read_text())
    assert best["params"] == {"lr": 4e-3} and best["test"]["num_examples"] == 80
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials_run"] == 2 and 0 < summary["rounds_s"] < summary["wall_s"]
    # Nothing of the study is left running: no SuperLink, ServerApp, Ray or actor.
    assert pids_with_environ(f"FEDTEXT_TEST_STUDY={mark}") == []
