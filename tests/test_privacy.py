"""Differential privacy: accounting, clipping, noise, budgets, resume, bad input (issue 10)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, MessageType, RecordDict

from client.privacy import BudgetSpent
from common.config import FedTextConfig, secagg_params
from common.errors import ConfigError
from common.privacy.accounting import Mechanism, calibrate, epsilon
from common.privacy.distributed import (
    client_noise_variance,
    clip_update,
    effective_noise_multiplier,
    levels_per_unit,
    noise_floor,
    noise_multiplier,
    skellam_noise,
)
from common.secagg.encoding import decode_sum, encode_update
from server.aggregation import RoundUpdate
from server.privacy import ClientLevelPrivacy, RecordLevelPrivacy

# --- accounting -------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "rate", "steps"), [(1.1, 0.01, 1000), (0.8, 0.05, 300), (2.0, 1.0, 10)])
def test_accountant_matches_opacus_on_the_same_events(sigma: float, rate: float, steps: int) -> None:
    from opacus.accountants import RDPAccountant

    opacus = RDPAccountant()
    opacus.history = [(sigma, rate, steps)]
    # Same RDP bound and conversion; the two libraries evaluate slightly
    # different sets of orders, which moves epsilon by well under 1%.
    assert epsilon([Mechanism(sigma, rate, steps)], 1e-5) == pytest.approx(opacus.get_epsilon(1e-5), rel=0.01)


# TensorFlow Privacy's MNIST DP-SGD tutorial (tutorials/README.md, "Select
# Parameters"): 60,000 rows, batch 256, delta 1e-5 -> published epsilon.
TF_PRIVACY_TABLE = [(1.12, 60, 2.92), (0.6, 30, 9.74), (1.2, 10, 1.20)]


@pytest.mark.parametrize(("sigma", "epochs", "published"), TF_PRIVACY_TABLE)
def test_accountant_reproduces_a_published_reference(sigma: float, epochs: int, published: float) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp

    rate, steps = 256 / 60000, int(epochs * 60000 / 256)
    # The table used the RDP orders and RDP -> (eps, delta) conversion of its
    # time (Mironov 2017, Prop. 3): eps = min over orders of rdp + log(1/delta) / (order - 1).
    orders = np.array([1 + x / 10 for x in range(1, 100)] + list(range(12, 64)))
    rdp = compute_rdp(q=rate, noise_multiplier=sigma, steps=steps, orders=orders)
    classic = float(np.min(rdp + math.log(1e5) / (orders - 1)))
    assert classic == pytest.approx(published, abs=0.02)
    # fedtext's accountant converts with the tighter bound of Balle et al. (2020): never above it.
    ours = epsilon([Mechanism(sigma, rate, steps)], 1e-5)
    assert ours <= classic


def test_pld_accountant_is_no_looser_than_rdp() -> None:
    event = [Mechanism(1.0, 0.02, 500)]
    assert epsilon(event, 1e-5, "pld") <= epsilon(event, 1e-5, "rdp")


def test_calibration_spends_the_budget_and_no_more() -> None:
    sigma = calibrate(lambda s: [Mechanism(s, 0.02, 400)], 3.0, 1e-5)
    assert 2.97 <= epsilon([Mechanism(sigma, 0.02, 400)], 1e-5) <= 3.0
    with pytest.raises(ValueError, match="unreachable"):
        calibrate(lambda s: [Mechanism(s, 1.0, 100_000)], 1e-3, 1e-5)


# --- clipping and noise -----------------------------------------------------------------


def test_clipping_bounds_every_update_and_leaves_small_ones_alone() -> None:
    rng = np.random.default_rng(0)
    for scale in (1e-3, 0.1, 10.0, 1e3):
        update = {"a": rng.normal(0, scale, (30, 7)).astype(np.float32), "b": rng.normal(0, scale, 5).astype(np.float32)}
        clipped, norm = clip_update(update, 1.0)
        after = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in clipped.values()))
        assert after <= 1.0 + 1e-6
        if norm <= 1.0:
            assert all(np.array_equal(clipped[k], update[k]) for k in update)


def test_skellam_noise_summed_over_clients_is_skellam_of_the_total() -> None:
    from scipy.stats import skellam

    rng = np.random.default_rng(1)
    total_variance, clients, draws = 60.0, 5, 200_000
    summed = sum(skellam_noise(draws, total_variance / clients, rng) for _ in range(clients))
    values, counts = np.unique(summed, return_counts=True)
    expected = skellam.pmf(values, total_variance / 2, total_variance / 2)
    # Total variation distance between the empirical and the intended law.
    tv = 0.5 * (np.abs(counts / draws - expected).sum() + (1 - expected.sum()))
    assert tv < 0.01
    assert summed.var() == pytest.approx(total_variance, rel=0.02)


def _aggregate_noise_under_secagg(cfg: FedTextConfig, clients: int, survivors: int, size: int) -> np.ndarray:
    """The noise in the sum the server unmasks, from clients with zero updates."""
    from common.secagg.local import run_local_round

    params = secagg_params(cfg)
    sigma = noise_multiplier(cfg, size)
    floor = noise_floor(clients, cfg.secagg_threshold)
    variance = client_noise_variance(sigma, cfg.dp_clip, levels_per_unit(params.levels, params.clip), floor)
    nodes = list(range(1, clients + 1))
    updates = {n: np.zeros(size, dtype=np.float32) for n in nodes}
    noise = {n: skellam_noise(size, variance) for n in nodes}
    drop = {n: 2 for n in nodes[survivors:]}  # lost before their masked input
    result = run_local_round(params, updates, dict.fromkeys(nodes, 1), noise=noise, drop=drop)
    assert len(result.survivors) == survivors
    return result.mean_update.astype(np.float64) * survivors  # mean x n = the noisy sum


@pytest.mark.parametrize("survivors", [5, 4])
def test_noise_the_server_unmasks_has_the_calibrated_variance(survivors: int) -> None:
    cfg = FedTextConfig(dp="client", clients=5, dp_delta=1e-3, dp_clip=0.3, secagg_bits=20)
    size = 40_000
    total = _aggregate_noise_under_secagg(cfg, 5, survivors, size)
    sigma, floor = noise_multiplier(cfg, size), noise_floor(5, cfg.secagg_threshold)
    expected = (survivors / floor) * (sigma * cfg.dp_clip) ** 2
    # 40,000 draws: the sample variance is within 3% of the truth with overwhelming probability.
    assert total.var() == pytest.approx(expected, rel=0.03)
    assert abs(total.mean()) < 5 * math.sqrt(expected / size)


def test_noise_the_server_adds_without_secagg_has_the_calibrated_variance() -> None:
    cfg = FedTextConfig(dp="client", clients=4, dp_delta=1e-3, dp_clip=0.5, secagg=False)
    privacy = ClientLevelPrivacy(cfg, num_values=50_000)
    update = RoundUpdate({"w": np.zeros(50_000, dtype=np.float32)}, total_examples=4, num_clients=4)
    noisy = privacy.finish(update)
    total = noisy.mean_update["w"].astype(np.float64) * 4
    assert total.var() == pytest.approx((privacy.sigma * cfg.dp_clip) ** 2, rel=0.03)


def test_secagg_sensitivity_includes_rounding() -> None:
    scale = levels_per_unit((1 << 24) - 1, 0.5)
    eff = effective_noise_multiplier(1.0, 1.0, scale, floor=3, survivors=3, num_values=22_000_000)
    assert 0.999 < eff < 1.0  # sqrt(m) levels of rounding against C s = 16.8M levels
    assert effective_noise_multiplier(1.0, 1.0, scale, 3, 6, 1) == pytest.approx(math.sqrt(2), rel=1e-6)


def test_decoding_without_noise_is_unchanged_and_with_noise_wraps_correctly() -> None:
    from common.secagg import SecAggParams

    params = SecAggParams(clip=1.0, bits=20, max_weight=1)
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, 1000).astype(np.float32) for _ in range(3)]
    noise = [rng.integers(-(1 << 22), 1 << 22, 1000) for _ in range(3)]  # pushes sums below 0 and past L
    total = sum(encode_update(x, 1, params, noise=n) for x, n in zip(xs, noise)).astype(np.uint32)
    mean, weight = decode_sum(total, 3, params)
    quantum = 2.0 / params.levels
    expected = (sum(xs) + sum(noise) * quantum) / 3
    assert weight == 3 and np.abs(mean - expected).max() < 3 * quantum


# --- the server's privacy layer --------------------------------------------------------------


def _round(n: int) -> RoundUpdate:
    return RoundUpdate({"w": np.zeros(10, dtype=np.float32)}, total_examples=n, num_clients=n)


class _Message:
    def __init__(self) -> None:
        self.content = RecordDict({"config": ConfigRecord({})})


def test_a_secagg_sum_below_the_noise_floor_is_discarded() -> None:
    cfg = FedTextConfig(dp="client", clients=10, dp_delta=1e-3)
    privacy = ClientLevelPrivacy(cfg, num_values=10)
    messages = [_Message() for _ in range(10)]
    privacy.prepare(messages)  # type: ignore[arg-type]
    assert privacy.floor == 6 and all(m.content["config"]["dp-noise-floor"] == 6 for m in messages)
    discarded = privacy.finish(_round(5))
    assert discarded.empty and "below the noise floor 6" in discarded.problems[-1] and privacy.events == []
    assert privacy.finish(_round(6)) is not None and len(privacy.events) == 1


def test_client_level_budget_stops_the_run_after_the_planned_rounds() -> None:
    cfg = FedTextConfig(dp="client", clients=10, dp_delta=1e-3, rounds=3, dp_epsilon=2.0, secagg=False)
    privacy = ClientLevelPrivacy(cfg, num_values=10)
    for r in range(1, 4):
        assert privacy.allows_round(r)[0]
        privacy.finish(_round(10))
    assert privacy.record()["epsilon"] <= 2.0
    allowed, why = privacy.allows_round(4)
    assert not allowed and "privacy budget spent" in why


def test_resume_continues_the_client_level_accounting() -> None:
    cfg = FedTextConfig(dp="client", clients=10, dp_delta=1e-3, rounds=4, fraction_train=0.5)
    first = ClientLevelPrivacy(cfg, num_values=1000)
    rounds = []
    for r in (1, 2):
        first.prepare([_Message() for _ in range(5)])  # type: ignore[arg-type]
        first.finish(_round(5 if r == 1 else 4))
        rounds.append({"round": r, "privacy": first.record()})
    resumed = ClientLevelPrivacy(cfg, num_values=1000)
    resumed.restore(json.loads(json.dumps(rounds)))  # through metrics.json
    assert resumed.epsilon() == pytest.approx(first.epsilon(), rel=1e-9) and resumed.epsilon() > 0


def test_record_level_server_keeps_the_largest_epsilon() -> None:
    privacy = RecordLevelPrivacy(FedTextConfig(dp="record"))
    update = _round(3)
    update.train_metrics = {"dp-epsilon": 2.5, "dp-noise-multiplier": 0.9}
    privacy.finish(update)
    assert privacy.record()["epsilon"] == 2.5
    privacy.restore([{"privacy": {"epsilon": 4.0}}, {"privacy": {"epsilon": 3.0}}])
    assert privacy.record()["epsilon"] == 4.0


def test_worst_client_epsilon_is_what_the_round_reports() -> None:
    from server.aggregation import client_mean_metrics

    merged = client_mean_metrics([{"dp-epsilon": 1.0, "train-steps": 2}, {"dp-epsilon": 3.0, "train-steps": 4}])
    assert merged == {"dp-epsilon": 3.0, "train-steps": 3.0}


# --- the client's side -------------------------------------------------------------------

LABELS = ["fresh", "rotten"]
TINY = dict(num_hidden_layers=1, max_examples=80, max_length=32, batch_size=8, local_steps=2, rounds=2)


def _train(cfg: FedTextConfig, context: Context, round_number: int):  # noqa: ANN202
    from client.app import train
    from common.messages import instruction_config
    from server.global_model import GlobalModel
    from tests.conftest import received_message

    arrays = GlobalModel(cfg, LABELS).arrays()
    content = RecordDict({"arrays": arrays, "config": instruction_config(round_number, LABELS)})
    return train(received_message(content, MessageType.TRAIN, dst_node_id=7), context)


def _context(cfg: FedTextConfig) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2},
                   state=RecordDict(), run_config=cfg.to_mapping())


@pytest.mark.usefixtures("flwr_identity")
def test_record_level_client_refuses_a_round_past_its_budget_and_resume_keeps_its_ledger(tmp_path: Path) -> None:
    cfg = FedTextConfig(**TINY, dp="record", dp_delta=1e-3, secagg=False, out=str(tmp_path / "run"))
    context = _context(cfg)
    epsilons = []
    for r in (1, 2):
        reply = _train(cfg, context, r)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        metrics = reply.content.metric_records["metrics"]
        assert "train-loss" not in metrics  # nothing computed from the rows travels in the clear
        epsilons.append(metrics["dp-epsilon"])
    assert epsilons[0] < epsilons[1] <= 8.0
    # Beyond the 2 planned rounds. Flower turns the exception into the error
    # reply the server records (the real simulation test sees it there).
    with pytest.raises(BudgetSpent, match="privacy budget spent"):
        _train(cfg, context, 3)
    ledger = json.loads((tmp_path / "run" / "privacy" / "client-0.json").read_text())
    assert sum(steps for _, _, steps in ledger[str(tmp_path / "run")]["history"]) == 4
    # A resumed run, in a fresh process (empty state), continues from the ledger.
    resumed = cfg.replace(resume=str(tmp_path / "run" / "checkpoint"))
    with pytest.raises(BudgetSpent, match="4 steps taken"):
        _train(resumed, _context(resumed), 3)


@pytest.mark.usefixtures("flwr_identity")
def test_client_level_client_sends_a_clipped_update_weighted_once() -> None:
    from common.messages import parse_train_reply
    from server.global_model import GlobalModel

    cfg = FedTextConfig(**TINY, dp="client", dp_clip=0.01, dp_delta=1e-3, secagg=False)
    reply = _train(cfg, _context(cfg), 1)
    expected = {k: v.numpy() for k, v in GlobalModel(cfg, LABELS).arrays().items()}
    parsed = parse_train_reply(reply.content, expected)
    norm = math.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in parsed.update.values()))
    assert parsed.num_examples == 1 and 0 < norm <= 0.01 * (1 + 1e-5)


@pytest.mark.parametrize("freeze", ["none", "embeddings", "bottom:1", "head", "lora"])
def test_opacus_gives_per_row_gradients_under_every_freezing_policy(freeze: str) -> None:
    from common.model import build_model, load_tokenizer
    from common.privacy.dpsgd import check_supported

    cfg = FedTextConfig(num_hidden_layers=2, freeze=freeze, dp="record")
    model = build_model(cfg, LABELS)
    check_supported(model, load_tokenizer(cfg))
    # Nothing of Opacus stays on the (cached) model.
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_ghost_clipping_takes_the_step_per_row_clipping_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where embeddings train, rows are ghost-clipped: the step must be the per-row path's, scale included.

    Without noise and with plain SGD (AdamW would hide a wrong scale, and the
    noise is calibrated to the clipped sum's), one step of two micro-batches
    moves every weight as the per-row path does.
    """
    import copy

    import datasets
    import torch

    import common.privacy.dpsgd as dpsgd
    import common.training
    from common.model import build_model, load_tokenizer

    cfg = FedTextConfig(num_hidden_layers=1, max_length=24, batch_size=4, grad_accum_steps=2, freeze="none",
                        dp="record", lr=0.5, lr_schedule="constant", warmup_ratio=0.0, local_steps=1)
    texts = [f"review {i}: the film was {'wonderful' if i % 2 else 'a dull, overlong mess'}" for i in range(12)]
    rows = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(12)]})
    plan = dpsgd.DpSgdPlan(rows=12, expected_batch=8, steps_per_round=1, rounds=1, noise_multiplier=0.0, clip=0.05)
    monkeypatch.setattr(common.training, "adamw", lambda model, lr, wd: torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=lr))
    start = build_model(cfg, LABELS)
    tokenizer = load_tokenizer(cfg)
    moved = {}
    assert dpsgd.trains_embeddings(start)  # train_private ghost-clips this model by itself
    for ghost in (False, True):
        model = copy.deepcopy(start)
        dpsgd.train_private(model, rows, tokenizer, cfg, torch.device("cpu"), seed=3, plan=plan, ghost=ghost)
        moved[ghost] = torch.cat([(p.detach() - q.detach()).ravel()
                                  for p, q in zip(model.parameters(), start.parameters(), strict=True)])
    assert moved[False].norm() > 0
    # The clipped sum over the sampled rows, divided by the expected batch: at most clip per row.
    assert moved[False].norm() <= 0.5 * 0.05 * 12 / 8 + 1e-6
    assert torch.allclose(moved[True], moved[False], rtol=1e-3, atol=1e-7), (moved[True] - moved[False]).abs().max()
    assert not any(hasattr(p, "_norm_sample") for p in model.parameters())  # nothing of Opacus stays


def test_a_layer_opacus_cannot_handle_is_named() -> None:
    import torch

    from common.privacy.dpsgd import check_supported

    class WithBatchNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(4)

    with pytest.raises(ConfigError, match="config key 'dp': Opacus cannot train WithBatchNorm.*norm"):
        check_supported(WithBatchNorm(), tokenizer=None)


# --- pre-flight and bad input -----------------------------------------------------------------


def test_preflight_names_the_key_to_change() -> None:
    from common.privacy.preflight import check_plan

    with pytest.raises(ConfigError, match="config key 'dp-epsilon': .*unreachable"):
        check_plan(FedTextConfig(dp="record", dp_epsilon=1e-4, rounds=50), 1000, [100])
    with pytest.raises(ConfigError, match="config key 'dp-delta': expected below 1/n"):
        check_plan(FedTextConfig(dp="record", dp_delta=0.05), 1000, [40, 400])
    with pytest.raises(ConfigError, match="config key 'secagg-bits': bits=24: .* use secagg-bits <= 2[0-3]$"):
        check_plan(FedTextConfig(dp="client", clients=200, dp_delta=1e-3, dp_epsilon=0.5, rounds=20), 1000)
    line = check_plan(FedTextConfig(dp="client", clients=10, dp_delta=1e-3), 1000)
    assert "client-level DP" in line and "each 1/6" in line


def test_dp_flags_with_dp_none_fail_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cli import main

    assert main(["simulate", "--dp-epsilon", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedtext: error: config key 'dp-epsilon': needs dp record or dp client, got dp none"]


def test_dp_off_leaves_the_update_path_as_it_was() -> None:
    cfg = FedTextConfig()
    assert secagg_params(cfg).max_weight == cfg.secagg_max_weight
    from server.privacy import NoPrivacy, build_privacy

    privacy = build_privacy(cfg, 10)
    update = _round(3)
    assert isinstance(privacy, NoPrivacy) and privacy.finish(update) is update and privacy.record() is None


# --- whole federations ---------------------------------------------------------------------
#
# In process here; `fedtext simulate --dp client` on Ray, among 100 clients: tests/test_many_clients.py.

# Frozen embeddings: record-level DP would otherwise build per-row gradients of the
# 11.7 M-parameter word embedding (375 MB for a batch of 8) and spend most of its
# minute there; every policy's per-row gradients are checked above, on one batch.
FEDERATION = dict(num_hidden_layers=1, max_length=32, batch_size=8, data="packaged:bbc_news", max_examples=240,
                  max_test_examples=60, clients=3, fraction_evaluate=0.0, local_steps=3, dp_delta=1e-3,
                  freeze="embeddings")


def _federate(tmp_path: Path, **changes: object) -> dict:
    from simulations.inprocess import run_in_process

    run_in_process(FedTextConfig(**{**FEDERATION, **changes}, out=str(tmp_path / "run")))
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.usefixtures("flwr_identity")
def test_a_client_level_federation_under_secagg_accounts_every_round(tmp_path: Path) -> None:
    doc = _federate(tmp_path, dp="client", rounds=3, dp_epsilon=4.0, lr=1e-3)
    privacy = [r["privacy"] for r in doc["rounds"][1:]]
    assert [p["mode"] for p in privacy] == ["client"] * 3
    eps = [p["epsilon"] for p in privacy]
    assert 0 < eps[0] < eps[1] < eps[2] <= 4.0
    # 3 clients, threshold 0.6: the noise is split 2 ways and all 3 survive, so
    # each round holds sqrt(3/2) x the calibrated noise and spends less than planned.
    assert all(p["noise_floor"] == 2 for p in privacy)
    assert eps[2] < 4.0 * 0.9
    assert all(r["clients"]["trained"] == 3 and "problems" not in r["clients"] for r in doc["rounds"][1:])


@pytest.mark.usefixtures("flwr_identity")
def test_a_record_level_federation_learns_and_a_round_past_the_budget_is_refused(tmp_path: Path) -> None:
    doc = _federate(tmp_path, dp="record", rounds=3, dp_epsilon=50.0, lr=3e-3, local_steps=8)
    accuracy = [r["central"]["accuracy"] for r in doc["rounds"]]
    # 5 topics, 60 test rows: 0.23 untrained, 0.5 after 24 noisy steps (seeded).
    assert accuracy[-1] >= accuracy[0] + 0.12, accuracy
    eps = [r["privacy"]["epsilon"] for r in doc["rounds"][1:]]
    assert eps[0] < eps[1] < eps[2] <= 50.0
    assert sorted(p.name for p in (tmp_path / "run" / "privacy").iterdir()) == [f"client-{i}.json" for i in range(3)]
    # Resumed for a 4th round that the budget was not calibrated for: each
    # client refuses it, says why, and the run records it.
    resumed = _federate(tmp_path, dp="record", rounds=4, dp_epsilon=50.0, lr=3e-3, local_steps=8,
                        resume=str(tmp_path / "run"))
    last = resumed["rounds"][-1]
    assert last["round"] == 4 and last["clients"]["trained"] == 0
    refusals = [line for line in last["clients"]["problems"] if "privacy budget spent" in line]
    assert len(refusals) == 3  # and SecAgg, left with nobody, says so in a fourth line


def test_a_tuning_trial_cannot_buy_accuracy_with_privacy() -> None:
    with pytest.raises(ConfigError, match="key 'dp-epsilon' cannot be set by a trial"):
        FedTextConfig(dp="record").with_trial({"dp-epsilon": 100.0})
    assert FedTextConfig(dp="record").with_trial({"dp-clip": 0.5}).dp_clip == 0.5


def test_the_privacy_report_compares_each_private_run_with_its_non_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simulations.bench_privacy as bench

    monkeypatch.setattr(bench, "DOCS", tmp_path)
    runs = tmp_path / "runs.jsonl"
    base = {"data": "packaged:rotten_tomatoes", "freeze": "head", "final_f1": 0.7, "seconds": 10.0, "bytes_up": 1e6}
    runs.write_text("\n".join(json.dumps(r) for r in [
        {**base, "final_acc": 0.80, "epsilon": []},
        {**base, "dp": "record", "dp-epsilon": "8", "final_acc": 0.78, "epsilon": [4.0, 7.99], "noise_multiplier": 0.7},
    ]) + "\n")
    table = bench.report(str(runs))
    assert "| record, eps 8 | 0.700 | 7.99 | 0.780 |" in table and "0.975x" in table
    assert (tmp_path / "PRIVACY.md").read_text().count("privacy-utility:begin") == 1
    assert json.loads((tmp_path / "benchmarks" / "privacy.json").read_text())["runs"][1]["final_acc"] == 0.78


def test_the_privacy_benchmark_answers_help_and_a_malformed_argument_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from simulations.bench_privacy import main

    assert main(["--help"]) == 0 and "--overhead" in capsys.readouterr().out
    assert main(["dp=record", "epsilon8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m simulations.bench_privacy: error: argument 'epsilon8': expected KEY=VALUE "
                   "(a config key), or --report / --overhead / --jobs; see --help"]


def test_the_default_tuning_space_adds_the_dp_knob() -> None:
    from simulations.tuning.space import default_space

    assert [p.key for p in default_space(FedTextConfig())] == ["lr", "batch-size", "local-epochs"]
    assert default_space(FedTextConfig(dp="record"))[-1].key == "grad-accum-steps"
    assert default_space(FedTextConfig(dp="client", dp_delta=1e-3))[-1].key == "dp-clip"


def test_the_population_extrapolation_follows_the_noise_on_the_mean() -> None:
    from simulations.bench_privacy import extrapolate_population

    base = {"data": "d", "clients": "100", "fraction-train": "0.1"}
    rows = [{**base, "final_acc": 0.80},
            {**base, "dp": "client", "dp-epsilon": "200", "tag": "loose", "noise_multiplier": 0.2, "final_acc": 0.79},
            {**base, "dp": "client", "dp-epsilon": "8", "tag": "tight", "noise_multiplier": 0.9, "final_acc": 0.60}]
    found = extrapolate_population(rows)
    assert found["from"] == "loose" and found["noise_on_mean"] == pytest.approx(0.02)
    # sigma for epsilon 8 at q 0.1 over 10 rounds, over q x 0.02 noise on the mean.
    assert found["clients"] == math.ceil(found["sigma"] / (0.1 * 0.02))
    assert extrapolate_population(rows[:1] + rows[2:]) is None


def test_dp_off_decodes_the_secagg_sum_bit_for_bit_as_before() -> None:
    from common.secagg import SecAggParams

    params = SecAggParams(clip=0.5, bits=24, max_weight=10000)
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, 0.1, 50_000).astype(np.float32) for _ in range(5)]
    total = sum(encode_update(x, 100 + i, params) for i, x in enumerate(xs)).astype(np.uint32)
    mean, weight = decode_sum(total, 5, params)
    # The decoding before the centred reading existed: (W / S_w)(S 2C / L - n C).
    before = ((total[:-1].astype(np.float64) * (2 * 0.5 / params.levels) - 5 * 0.5) * (10000 / weight)).astype(np.float32)
    assert mean.tobytes() == before.tobytes()


def test_the_readme_dp_commands_are_valid_configs() -> None:
    import re
    import shlex

    from common.config import config_from_args
    from simulations.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [" ".join(c.split()) for c in re.findall(r"^fedtext simulate --dp (?:.*\\\n)*.*$", readme, re.M)]
    commands = [c.replace("\\ ", "") for c in commands]
    assert len(commands) == 2
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        cfg = config_from_args(args)
        assert cfg.dp in ("record", "client") and cfg.dp_epsilon == 8.0
