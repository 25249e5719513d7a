"""Local training on real rows: it learns, FedProx holds it back, steps are as planned."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from common.config import FedTextConfig
from common.freezing import trainable_state
from common.model import build_model, load_tokenizer
from common.training import by_length, evaluate_model, iterate_batches, planned_steps, train_model

LABELS = ["fresh", "rotten"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows(rt_rows: list[dict[str, str]]):  # noqa: ANN201 - datasets.Dataset
    """160 real reviews, 100 fresh and 60 rotten (majority rate 62.5%)."""
    import datasets

    fresh = [r for r in rt_rows if r["label"] == "fresh"][:100]
    rotten = [r for r in rt_rows if r["label"] == "rotten"][:60]
    picked = fresh + rotten
    order = np.random.default_rng(0).permutation(len(picked))
    return datasets.Dataset.from_dict({
        "text": [picked[i]["text"] for i in order],
        "label": [LABELS.index(picked[i]["label"]) for i in order],
    })


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    return load_tokenizer(FedTextConfig())


def _cfg(**changes: object) -> FedTextConfig:
    base = {"num_hidden_layers": 1, "max_length": 32, "batch_size": 16}
    return FedTextConfig(**{**base, **changes})


def test_training_learns_the_training_rows(tokenizer) -> None:  # noqa: ANN001
    # BBC topics, not movie sentiment: the 1-layer cut reads CLS through a new
    # pooler and learns sentiment too slowly for a unit test, topics in seconds.
    from common.data import load_labeled

    data = load_labeled("packaged:bbc_news")
    rows = data.dataset.shuffle(seed=0).select(range(150))
    cfg = _cfg(lr=2e-3, local_epochs=3.0, warmup_ratio=0.1)
    model = build_model(cfg, data.label_names)
    before = evaluate_model(model, rows, tokenizer, cfg, CPU, data.label_names)
    result = train_model(model, rows, tokenizer, cfg, CPU, seed=0)
    after = evaluate_model(model, rows, tokenizer, cfg, CPU, data.label_names)
    majority = max(np.bincount(rows["label"][:])) / len(rows)
    assert result.steps == planned_steps(len(rows), cfg) == 3 * math.ceil(150 / 16)
    assert result.num_examples == len(rows) and math.isfinite(result.loss)
    assert after["loss"] < 0.8 * before["loss"], (before["loss"], after["loss"])
    assert after["accuracy"] > majority + 0.2, (after["accuracy"], majority)


def _distance_moved(mu: float, tokenizer, rows) -> float:  # noqa: ANN001
    cfg = _cfg(freeze="head", lr=5e-2, local_steps=6, warmup_ratio=0.0, max_grad_norm=0.0)
    model = build_model(cfg, LABELS)
    start = trainable_state(model)
    train_model(model, rows, tokenizer, cfg, CPU, seed=3, proximal_mu=mu)
    end = trainable_state(model)
    return float(math.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in start)))


def test_proximal_term_keeps_weights_near_the_start(rows, tokenizer) -> None:  # noqa: ANN001
    free = _distance_moved(0.0, tokenizer, rows)
    held = _distance_moved(5.0, tokenizer, rows)
    assert free > 0
    assert held < 0.9 * free, (held, free)


class _Counter:
    """Counts optimizer steps (global hook) and forward passes with their batch sizes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.steps = 0
        self.batches: list[int] = []
        self._hooks = [
            register_optimizer_step_post_hook(self._on_step),
            model.register_forward_pre_hook(self._on_forward, with_kwargs=True),
        ]

    def _on_step(self, *_: object) -> None:
        self.steps += 1

    def _on_forward(self, _module: object, _args: object, kwargs: dict) -> None:
        self.batches.append(int(kwargs["input_ids"].shape[0]))

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def _run_counted(cfg: FedTextConfig, rows, tokenizer):  # noqa: ANN001, ANN202
    model = build_model(cfg, LABELS)
    counter = _Counter(model)
    try:
        result = train_model(model, rows, tokenizer, cfg, CPU, seed=1)
    finally:
        counter.close()
    return result, counter


def test_grad_accumulation_performs_the_planned_steps(rows, tokenizer) -> None:  # noqa: ANN001
    few = rows.select(range(20))
    cfg = _cfg(freeze="head", batch_size=4, grad_accum_steps=2, local_epochs=1.0, min_local_steps=0)
    result, counter = _run_counted(cfg, few, tokenizer)
    assert planned_steps(20, cfg) == math.ceil(20 / 8) == 3
    assert result.steps == counter.steps == 3
    assert counter.batches == [4] * 6  # 2 micro-batches of 4 per optimizer step


def test_a_small_client_repeats_its_rows_up_to_the_step_floor(rows, tokenizer) -> None:  # noqa: ANN001
    # Half an epoch of 20 rows at batch 4 is 3 steps; the floor makes it 8 (2 passes minus 2 batches).
    cfg = _cfg(freeze="head", batch_size=4, local_epochs=0.5, min_local_steps=8)
    result, counter = _run_counted(cfg, rows.select(range(20)), tokenizer)
    assert result.steps == counter.steps == 8
    assert counter.batches == [4] * 8


def test_local_steps_override_epochs(rows, tokenizer) -> None:  # noqa: ANN001
    cfg = _cfg(freeze="head", batch_size=4, local_steps=3, local_epochs=5.0)
    assert planned_steps(len(rows), cfg) == 3
    result, counter = _run_counted(cfg, rows.select(range(40)), tokenizer)
    assert result.steps == counter.steps == 3
    assert len(counter.batches) == 3


@pytest.mark.parametrize(
    ("n", "changes", "expected"),
    [
        (100, {"batch_size": 16, "local_epochs": 1.0, "min_local_steps": 0}, 7),
        (100, {"batch_size": 16, "local_epochs": 0.5, "min_local_steps": 0}, 4),
        (100, {"batch_size": 16, "local_epochs": 2.5, "min_local_steps": 0}, 18),
        (100, {"batch_size": 16, "local_epochs": 4.0}, 28),  # above the floor: epochs decide
        (1, {"batch_size": 16, "local_epochs": 0.1, "min_local_steps": 0}, 1),
        (100, {"batch_size": 8, "grad_accum_steps": 4, "local_epochs": 1.0, "min_local_steps": 0}, 4),
        # A small client takes the floor's steps, repeating its rows; local-steps overrides both.
        (100, {"batch_size": 16, "local_epochs": 0.5}, 20),
        (1, {"batch_size": 16, "local_epochs": 0.1, "min_local_steps": 3}, 3),
        (100, {"batch_size": 16, "local_steps": 2}, 2),
    ],
)
def test_planned_steps(n: int, changes: dict, expected: int) -> None:
    assert planned_steps(n, FedTextConfig(**changes)) == expected


def test_evaluation_batches_rows_by_length_and_scores_as_in_any_order(rows, tokenizer) -> None:  # noqa: ANN001
    ordered = by_length(rows)
    lengths = [len(t) for t in ordered["text"]]
    assert lengths == sorted(lengths) and sorted(ordered["text"]) == sorted(rows["text"])
    cfg = _cfg()
    model = build_model(cfg, LABELS)
    forward = evaluate_model(model, rows, tokenizer, cfg, CPU, LABELS)
    backward = evaluate_model(model, rows.select(range(len(rows) - 1, -1, -1)), tokenizer, cfg, CPU, LABELS)
    assert forward["confusion_matrix"] == backward["confusion_matrix"]
    assert sum(map(sum, forward["confusion_matrix"])) == len(rows)
    assert forward["loss"] == pytest.approx(backward["loss"], rel=1e-5)


def test_iterate_batches_shuffles_by_seed_and_keeps_order_without(rows, tokenizer) -> None:  # noqa: ANN001
    few = rows.select(range(10))
    ordered = [labels.tolist() for _, labels in iterate_batches(few, tokenizer, 4, 32, None)]
    assert sum(ordered, []) == few["label"][:]
    assert [len(b) for b in ordered] == [4, 4, 2]

    def first_pass(seed: int) -> list[int]:
        it = iterate_batches(few, tokenizer, 5, 32, seed)
        return sum((next(it)[1].tolist() for _ in range(2)), [])

    assert first_pass(1) == first_pass(1)
    assert sorted(first_pass(1)) == sorted(few["label"][:])


@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_tokenizing_the_head_of_long_texts_gives_what_the_whole_texts_give(tokenizer, max_length) -> None:  # noqa: ANN001
    from common.packaged import _bbc_news_rows
    from common.training import CHARS_PER_TOKEN, _encode, text_head, tokenize

    articles = [r["text"] for r in _bbc_news_rows()[::45]]  # 50 articles, 1,000-5,000 characters
    sparse = [" " * 3000 + "words after a run of spaces " * 20,  # spaces make no WordPiece tokens
              "<td> </td> " * 400 + "a table, then text",
              "x" * 5000,  # no space to cut at: tokenized whole
              "日本語のテキスト、句読点つき。" * 200]
    # The head's last word gives the last token kept: a head cut inside that word
    # ("interna|tionalization") would end with a token the whole text does not have.
    words = "ab " * (max_length - 3)
    chars = CHARS_PER_TOKEN * max_length
    straddling = " " * (chars - len(words) - len("interna")) + words + "internationalization and then more " * 9
    cut = 0
    batches = [articles[i:i + 16] for i in range(0, len(articles), 16)]
    # (alone: any other text of the batch that falls back to its whole would hide it)
    for batch in [*batches, sparse, articles[:3] + sparse[:1], [straddling]]:
        expected = _encode(tokenizer, batch, max_length)
        got = tokenize(tokenizer, batch, max_length)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
        cut += sum(len(text_head(t, CHARS_PER_TOKEN * max_length)) < len(t) for t in batch)
    assert cut > 50  # the heads were really used
