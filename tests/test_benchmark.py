"""simulations/benchmark.py: the plan is a fair comparison, the report keeps the prose,
and one real (tiny) run is measured end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from simulations.benchmark import (
    FREEZES,
    MARK_BEGIN,
    MARK_END,
    REFERENCE_FREEZE,
    Result,
    Scenario,
    plan,
    ratios,
    reused_result,
    run_scenario,
    write_report,
)

DATASETS = ["rotten_tomatoes", "bbc_news"]
PLAN = plan(DATASETS, {"rotten_tomatoes": 2000, "bbc_news": 2000}, 1000, clients=4, seed=42,
            policy_baselines=True, extra=("iid", "no-secagg"))
# What a federated run may change from its centralized baseline (federation-only keys).
FEDERATION_ONLY = {"strategy", "secagg"}


def test_every_federated_run_has_a_baseline_with_the_same_model_rows_and_epochs() -> None:
    by_key = {s.key: s for s in PLAN}
    assert len(by_key) == len(PLAN), "scenario names repeat"
    for s in PLAN:
        base = by_key[f"{s.dataset}/{s.baseline}"]
        assert base.command == "centralized"
        # The partition decides who holds which rows, not which rows train: the
        # centralized baseline trains on their union either way.
        ignored = FEDERATION_ONLY | {"partition"}
        mine = {k: v for k, v in s.flags.items() if k not in ignored}
        theirs = {k: v for k, v in base.flags.items() if k not in ignored}
        assert mine == theirs, (s.key, set(mine.items()) ^ set(theirs.items()))


def test_federated_runs_change_one_thing_from_the_reference() -> None:
    for ds in DATASETS:
        runs = {s.name: s for s in PLAN if s.dataset == ds}
        reference = runs["fedavg-dirichlet"].flags
        assert reference["partition"] == "dirichlet:0.5" and reference["secagg"] is True
        assert reference["freeze"] == REFERENCE_FREEZE and reference["strategy"] == "fedavg"
        for name, s in runs.items():
            if s.command == "centralized" or name == "fedavg-dirichlet":
                continue
            changed = {k for k in reference.keys() | s.flags.keys() if reference.get(k) != s.flags.get(k)}
            assert changed in ({"partition"}, {"secagg"}, {"strategy"}, {"freeze"}), (name, changed)
        assert {s.flags["freeze"] for s in runs.values() if s.command == "centralized"} == set(FREEZES)


def test_every_run_is_at_default_flags_but_the_data_and_its_change() -> None:
    allowed = {"data", "max-examples", "max-test-examples", "test-fraction", "clients", "seed", "partition",
               "freeze", "strategy", "secagg"}
    for s in PLAN:
        assert set(s.flags) <= allowed, (s.key, set(s.flags) - allowed)
    names = {s.name for s in PLAN if s.dataset == "rotten_tomatoes"}
    assert {"fedavg-natural", "fedavg-iid", "fedadam-dirichlet", "fedavgm-dirichlet"} <= names


def _result(name: str, command: str, accuracy: float, wall: float, freeze: str = REFERENCE_FREEZE,
            steps: int = 30) -> Result:
    return Result(
        key=f"bbc_news/{name}", dataset="bbc_news", name=name, command=command,
        flags={"freeze": freeze}, baseline=f"centralized-{freeze}", exit_code=0, wall_seconds=wall,
        round_seconds=wall / 2, train_steps=steps, peak_rss_mb=900.0, peak_pss_mb=700.0, accuracy=accuracy,
        f1_macro=accuracy - 0.01, accuracy_by_round=[0.2, accuracy], bytes_up_per_client_round=4e6,
        seconds_by_round=[wall / 4, wall / 4], majority_share=0.25, train_seconds_by_round=[wall / 5, wall / 5],
    )


def test_report_has_ratios_goals_and_keeps_the_hand_written_prose(tmp_path: Path) -> None:
    results = [_result(f"centralized-{REFERENCE_FREEZE}", "centralized", 0.90, 100.0),
               _result("fedavg-dirichlet", "simulate", 0.88, 130.0, steps=40),
               _result("fedadam-dirichlet", "simulate", 0.86, 130.0)]
    rows = ratios(results)
    assert rows[1]["accuracy_ratio"] == pytest.approx(0.88 / 0.90)
    assert rows[1]["wall_ratio"] == pytest.approx(1.3)
    # Training 1.3x as long for 40 steps against 30: 0.975x per step.
    assert rows[1]["later_training_ratio"] == pytest.approx(1.3)
    assert rows[1]["later_training_per_step_ratio"] == pytest.approx(1.3 * 30 / 40)
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\nintro prose\n\n{MARK_BEGIN}\nold table\n{MARK_END}\n\nclosing prose\n")
    write_report(rows, ["bbc_news"], "python -m simulations.benchmark", tmp_path)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nintro prose\n\n") and text.endswith("\n\nclosing prose\n")
    assert "old table" not in text
    assert "accuracy 0.978 x centralized, macro F1 0.978 x (misses the 0.99 goal)" in text
    assert ("rounds after the first 1.30 x centralized epoch time (misses 1.10; both sides' rounds include their "
            "evaluation), their training 1.30 x (0.97 x per optimizer step); whole run 1.30 x") in text
    assert "fedadam 0.977 (worst 0.977; meets >= 0.97)" in text
    assert f"{REFERENCE_FREEZE} +63.0 (meets >= +10 for every policy)" in text
    assert f"| fedavg-dirichlet | {REFERENCE_FREEZE} | 0.8800 |" in text
    figures = json.loads((tmp_path / "benchmarks" / "benchmark.json").read_text())
    assert figures["runs"][1]["accuracy_ratio"] == pytest.approx(0.88 / 0.90)
    assert (tmp_path / "benchmarks" / "bbc_news.png").stat().st_size > 0


def _train_rows(run: Path) -> int:
    """Training rows the run reported in its first line."""
    log = (run / "benchmark.log").read_text()
    return int(log.split("fedtext centralized: ", 1)[1].split(" training rows", 1)[0])


@pytest.mark.slow
def test_a_tiny_centralized_run_is_measured_and_can_be_reused(tmp_path: Path) -> None:
    tiny = plan(["bbc_news"], {"bbc_news": 60}, 30, clients=3, seed=1, num_hidden_layers=1,
                policy_baselines=True)
    scenario = next(s for s in tiny if s.name == "centralized-head")
    scenario = replace(scenario, flags={**scenario.flags, "max-length": 32, "rounds": 1, "local-epochs": 1.0,
                                        "batch-size": 16})
    result = run_scenario(scenario, tmp_path / "run", log=lambda _line: None)
    assert result.exit_code == 0, (tmp_path / "run" / "benchmark.log").read_text()[-2000:]
    assert 0.0 <= result.accuracy <= 1.0 and not math.isnan(result.f1_macro)
    assert len(result.accuracy_by_round) == 2  # round 0 and the one epoch
    # The union of the 3 clients' training rows (each keeps 10% aside), one epoch:
    # fewer steps than the floor of a round (min-local-steps), so the floor's.
    from common.config import FedTextConfig

    assert result.train_steps == max(FedTextConfig().min_local_steps, math.ceil(_train_rows(tmp_path / "run") / 16))
    assert 0 < result.majority_share < 1
    # A round's time is its training plus its evaluation, as a federated round's is.
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    phases = doc["rounds"][1]["phases_s"]
    assert list(phases) == ["train", "central", "evaluate"]
    assert doc["rounds"][1]["seconds"] == pytest.approx(sum(phases.values()))
    assert result.train_seconds_by_round == [phases["train"]] and 0 < phases["train"] < result.seconds_by_round[0]
    # The sampler saw the training process itself: a torch process holds hundreds of MB.
    assert 200 < result.peak_pss_mb <= result.peak_rss_mb
    assert reused_result(scenario, tmp_path / "run") == result
    other = Scenario(scenario.name, scenario.dataset, scenario.command, {**scenario.flags, "seed": 2},
                     scenario.baseline)
    assert reused_result(other, tmp_path / "run") is None


def test_reuse_reads_old_federated_results_and_measures_old_centralized_ones_again(tmp_path: Path) -> None:
    from dataclasses import asdict

    def written(result: Result, phases: dict[str, float] | None) -> Path:
        folder = tmp_path / result.name
        folder.mkdir()
        old = {k: v for k, v in asdict(result).items() if k not in ("train_seconds_by_round", "seconds_by_round")}
        (folder / "result.json").write_text(json.dumps(old))
        rounds = [{"round": 0, "seconds": 0.0}, *({"round": r, "seconds": 20.0, **({"phases_s": phases} if phases
                                                                                    else {})} for r in (1, 2))]
        (folder / "metrics.json").write_text(json.dumps({"rounds": rounds}))
        return folder

    fed = _result("fedavg-dirichlet", "simulate", 0.88, 80.0)
    folder = written(fed, {"stage 2 (train)": 15.0, "central": 4.0, "evaluate": 1.0})
    scenario = Scenario(fed.name, fed.dataset, fed.command, fed.flags, fed.baseline)
    reused = reused_result(scenario, folder)
    assert reused.train_seconds_by_round == [15.0, 15.0] and reused.seconds_by_round == [20.0, 20.0]
    # A centralized round timed only its training then: not comparable with a federated round.
    central = _result(f"centralized-{REFERENCE_FREEZE}", "centralized", 0.90, 80.0)
    folder = written(central, None)
    assert reused_result(Scenario(central.name, central.dataset, central.command, central.flags, central.baseline),
                         folder) is None


def test_the_no_floor_run_differs_from_the_reference_by_the_step_floor_alone(tmp_path: Path) -> None:
    runs = {s.name: s for s in plan(["rotten_tomatoes"], {"rotten_tomatoes": 2000}, 1000, clients=4, seed=42,
                                    extra=("no-floor",))}
    ref, equal = runs["fedavg-dirichlet"], runs["fedavg-dirichlet-no-floor"]
    assert equal.flags == {**ref.flags, "min-local-steps": 0} and equal.baseline == ref.baseline
    results = [replace(_result(f"centralized-{REFERENCE_FREEZE}", "centralized", 0.80, 100.0), dataset="rotten_tomatoes",
                       key=f"rotten_tomatoes/centralized-{REFERENCE_FREEZE}"),
               replace(_result("fedavg-dirichlet-no-floor", "simulate", 0.80, 110.0), dataset="rotten_tomatoes",
                       key="rotten_tomatoes/fedavg-dirichlet-no-floor")]
    (tmp_path / "BENCHMARKS.md").write_text(f"{MARK_BEGIN}\n{MARK_END}\n")
    write_report(ratios(results), ["rotten_tomatoes"], "python -m simulations.benchmark", tmp_path)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert ("equal total local epochs (min-local-steps 0): accuracy 1.000 x centralized, macro F1 1.000 x; "
            "rounds after the first 1.10 x (meets 1.10)") in text
    assert "freezing policies" not in text  # the no-floor run is not a freezing policy's


def test_report_takes_the_readme_command_whose_flags_name_no_freezing(tmp_path: Path) -> None:
    byod = [replace(_result(f"centralized-{REFERENCE_FREEZE}", "centralized", 0.72, 100.0), flags={}),
            replace(_result("readme-byod", "simulate", 0.62, 90.0), flags={"clients": 5})]
    rows = ratios(byod)
    (tmp_path / "BENCHMARKS.md").write_text(f"{MARK_BEGIN}\n{MARK_END}\n")
    write_report(rows, ["bbc_news"], "python -m simulations.benchmark", tmp_path)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert f"| readme-byod | {REFERENCE_FREEZE} | 0.6200 |" in text
    assert "the README's bring-your-own-data command: accuracy 0.6200, +37.0 points" in text


def test_a_report_replaces_only_its_own_part_of_a_document(tmp_path: Path) -> None:
    from common.reports import markers, replace_part

    begin, end = markers("demo", "python -m demo")
    doc = tmp_path / "DOC.md"
    replace_part(doc, begin, end, "first figures", "# Doc")
    assert doc.read_text() == f"# Doc\n\n{begin}\n\nfirst figures\n{end}\n"
    doc.write_text("# Doc\n\nhand-written\n\n" + doc.read_text().split("# Doc\n", 1)[1] + "\nafter\n")
    replace_part(doc, begin, end, "second figures", "# Doc")
    text = doc.read_text()
    assert "hand-written" in text and text.endswith(f"second figures\n{end}\n\nafter\n")
    assert "first figures" not in text


def test_the_deployment_and_start_up_reports_render_from_their_committed_figures(tmp_path: Path) -> None:
    # `--report` (bench_deploy) and the start-up part are rewritten from the JSON alone.
    from simulations import bench_deploy, bench_startup

    docs = Path(__file__).resolve().parents[1] / "docs"
    deploy = json.loads((docs / "benchmarks" / "deploy.json").read_text())
    text = bench_deploy.markdown(deploy)
    assert "| deploy --threads 1 |" in text and "(train) |" in text and "The previous report (" in text
    startup = bench_startup.markdown(json.loads((docs / "benchmarks" / "startup.json").read_text()))
    assert "**round 1 starting (start-up)**" in startup and "Start-up + shut-down:" in startup
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "deploy.json").write_text(json.dumps(deploy))
    assert bench_deploy.main(["--report", "--docs", str(tmp_path)]) == 0
    assert text in (tmp_path / "BENCHMARKS.md").read_text()


def test_the_scale_report_renders_from_its_committed_figures() -> None:
    from simulations import bench_scale

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = bench_scale.markdown(json.loads((docs / "benchmarks" / "scale.json").read_text()))
    assert "| 1,000 | fraction 0.01: 10-10 trained |" in text and "Per-round time against" in text
    long = bench_scale.markdown(json.loads((docs / "benchmarks" / "scale-20-rounds.json").read_text()))
    assert "rounds 2 to 20: tree PSS as the round ends" in long


def test_the_large_corpus_report_renders_failed_splits_as_rows(tmp_path: Path) -> None:
    from simulations import bench_data

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = bench_data.markdown(json.loads((docs / "benchmarks" / "data.json").read_text()))
    assert "| synthetic | 200,000 | iid |" in text and "| packaged | 12,808 | dirichlet:0.5 | fails: " in text
    assert "set by the share, not the corpus" in text


def test_the_synthetic_corpus_repeats_the_packaged_reviews_under_numbered_movies(tmp_path: Path) -> None:
    import csv

    from simulations.bench_data import synthetic_corpus

    path, base = synthetic_corpus(tmp_path / "big.csv", 30_000)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert base == 12_808 and len(rows) == 30_000
    assert rows[base]["text"] == rows[0]["text"] and rows[base]["movie_name"] == rows[0]["movie_name"] + " #1"
    assert rows[2 * base]["movie_name"] == rows[0]["movie_name"] + " #2"


def test_the_tuning_report_renders_from_its_committed_figures() -> None:
    from simulations import bench_tune

    figures = json.loads((Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "tuning.json").read_text())
    text = bench_tune.markdown(figures["studies"], figures["command"])
    assert "| grid | 15 (0) | 150 |" in text and "TPE with pruning vs the exhaustive grid" in text
    assert "Tuned federated vs tuned centralized" in text
