"""The default recipe: one lr schedule over the run, lr by freezing policy, and every
strategy and freezing policy learning at its defaults.

The learning runs are real federations with the server's round loop, SecAgg+,
the ClientApp and its training, in this process (``simulations.inprocess``):
a 1-layer MiniLM, BBC News topics, 3 clients, default rounds and lr.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import STRATEGIES, FedTextConfig
from common.recipe import DEFAULT_LR, lr_factor, peak_lr, round_span, step_lr_factors

# --- the schedule ---------------------------------------------------------------------------


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_factor(0.0, "linear", 0.1) == 0.0
    assert lr_factor(0.05, "linear", 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, "linear", 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, "linear", 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, "linear", 0.1) == pytest.approx(0.0)
    assert lr_factor(0.55, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_factor(0.9, "constant", 0.1) == 1.0


def test_rounds_split_the_run_so_a_federation_and_its_baseline_share_one_schedule() -> None:
    rounds = 10
    spans = [round_span(r, rounds, "linear") for r in range(1, rounds + 1)]
    assert spans[0] == (0.0, 0.1) and spans[-1] == (0.9, 1.0)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(spans, spans[1:], strict=False))
    # A client's steps in round r take the run's lr over that span: the first round
    # is not a whole warmup, the last ends near zero.
    first = step_lr_factors(spans[0], 4, "linear", 0.05)
    last = step_lr_factors(spans[-1], 4, "linear", 0.05)
    assert max(first) == pytest.approx(1.0, abs=0.03) and max(last) < 0.11
    # per-round restarts the whole warmup-and-decay in every round (the old behaviour).
    assert round_span(7, rounds, "per-round") == (0.0, 1.0)


def test_lr_zero_means_the_freezing_policys_default() -> None:
    assert peak_lr(FedTextConfig(freeze="head")) == DEFAULT_LR["head"]
    assert peak_lr(FedTextConfig(freeze="bottom:2")) == DEFAULT_LR["bottom"]
    assert peak_lr(FedTextConfig(freeze="lora", lr=5e-4)) == 5e-4
    assert DEFAULT_LR["head"] > DEFAULT_LR["lora"] > DEFAULT_LR["none"]


# --- learning at the defaults ----------------------------------------------------------------
#
# Each strategy runs once, paired with a freezing policy so that every policy runs
# at least once (six federations instead of eleven; the cheap policies twice, so
# that `make test` stays near 15 minutes).
# The benchmark (docs/BENCHMARKS.md) runs each of them on its own at full size.

# Every default but one: min-local-steps 0. Its floor of 20 steps a round would
# quadruple these runs (144 rows a client is 5 steps a round); it is the same for
# every strategy and policy, tested in test_training and measured in docs/TUNING.md.
TINY = dict(num_hidden_layers=1, max_length=32, data="packaged:bbc_news", max_examples=600,
            max_test_examples=80, clients=3, fraction_evaluate=0.0, min_local_steps=0)
PAIRS = [("fedavg", "none"), ("fedprox", "embeddings"), ("fedavgm", "bottom:1"),
         ("fedadam", "lora"), ("fedyogi", "head"), ("fedadagrad", "lora")]


def test_the_pairs_cover_every_strategy_and_policy() -> None:
    assert sorted(s for s, _ in PAIRS) == sorted(STRATEGIES)
    assert {p for _, p in PAIRS} == {"none", "embeddings", "bottom:1", "head", "lora"}


def _federate(tmp_path: Path, **changes: object) -> list[float]:
    from simulations.inprocess import run_in_process

    run_in_process(FedTextConfig(**{**TINY, **changes}, out=str(tmp_path)))
    rounds = json.loads((tmp_path / "metrics.json").read_text())["rounds"]
    return [r["central"]["accuracy"] for r in rounds]


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "freeze"), PAIRS)
def test_every_strategy_and_policy_learns_at_its_defaults(tmp_path: Path, strategy: str,
                                                          freeze: str) -> None:
    # bottom:1 on a 1-layer model would freeze every block (the head alone, at
    # bottom's lr): give it a second layer to train.
    layers = {"num_hidden_layers": 2} if freeze.startswith("bottom:") else {}
    accuracy = _federate(tmp_path, strategy=strategy, freeze=freeze, **layers)
    # 5 topics, 80 test rows: the untrained head is near chance (0.2). 600 rows,
    # 10 rounds of half a local epoch reach 0.6-0.85 across the policies.
    assert accuracy[-1] >= accuracy[0] + 0.2 and accuracy[-1] >= 0.45, accuracy
