"""Freezing policies: exactly the intended parameters train, travel, and agree across parties."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch

from common.config import FedTextConfig
from common.errors import ConfigError
from common.freezing import count_parameters, load_trainable_state, trainable_state
from common.model import build_model

LABELS = ["fresh", "rotten"]
_CACHE: dict[tuple, torch.nn.Module] = {}


def model_for(**changes: object) -> torch.nn.Module:
    """A built model per config, shared by the tests that only read it (CLS pooling unless asked)."""
    cfg = FedTextConfig(**{"num_hidden_layers": 1, "max_length": 32, "batch_size": 8, "pooling": "cls",
                           **changes})
    key = tuple(sorted(cfg.to_mapping().items()))
    if key not in _CACHE:
        _CACHE[key] = build_model(cfg, LABELS)
    return _CACHE[key]


def _group(name: str) -> str:
    """'bert.encoder.layer.0.attention...' -> 'layer.0'; 'bert.embeddings...' -> 'embeddings'.

    The same for the mean-pooling classifier, whose BERT is 'encoder.' (not 'bert.').
    """
    parts = name.removeprefix("base_model.model.").split(".")
    if parts[0] in ("bert", "encoder") and parts[1] in ("embeddings", "encoder", "pooler"):
        parts = parts[1:]
    if parts[0] == "encoder":
        return f"layer.{parts[2]}"
    return parts[0]


def _trainable_groups(model: torch.nn.Module) -> set[str]:
    return {_group(n) for n, p in model.named_parameters() if p.requires_grad}


def _frozen_groups(model: torch.nn.Module) -> set[str]:
    return {_group(n) for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize(
    ("layers", "freeze", "trainable", "frozen"),
    [
        (1, "none", {"embeddings", "layer.0", "pooler", "classifier"}, set()),
        (1, "embeddings", {"layer.0", "pooler", "classifier"}, {"embeddings"}),
        (1, "bottom:1", {"pooler", "classifier"}, {"embeddings", "layer.0"}),
        (2, "bottom:1", {"layer.1", "pooler", "classifier"}, {"embeddings", "layer.0"}),
        (1, "head", {"pooler", "classifier"}, {"embeddings", "layer.0"}),
    ],
)
def test_policy_trains_exactly_the_expected_groups(
    layers: int, freeze: str, trainable: set[str], frozen: set[str], pooling: str
) -> None:
    model = model_for(num_hidden_layers=layers, freeze=freeze, pooling=pooling)
    if pooling == "mean":  # the mean-pooling classifier has no pooler at all
        trainable = trainable - {"pooler"}
        assert not any(".pooler." in n for n, _ in model.named_parameters())
    assert _trainable_groups(model) == trainable
    assert _frozen_groups(model) == frozen
    # What travels is exactly what trains.
    assert set(trainable_state(model)) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_bottom_zero_is_embeddings_only() -> None:
    model = model_for(freeze="bottom:0")
    assert _frozen_groups(model) == {"embeddings"}


def test_bottom_more_than_layers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bottom:2 but the model has 1 layers"):
        model_for(freeze="bottom:2")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_lora_trains_adapters_and_head_only(pooling: str) -> None:
    model = model_for(freeze="lora", pooling=pooling)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    adapters = [n for n in names if "lora_" in n]
    heads = [n for n in names if "lora_" not in n]
    # Adapters on the attention projections of the one layer: query, key, value and
    # the attention output, found from the model (BertAttention's linear layers).
    assert adapters and all(".attention." in n for n in adapters)
    assert {n.split(".attention.")[1].rsplit(".lora_", 1)[0] for n in adapters} == {
        "self.query", "self.key", "self.value", "output.dense"}
    assert {_group(n) for n in heads} == ({"pooler", "classifier"} if pooling == "cls" else {"classifier"})
    assert all("modules_to_save" in n for n in heads)
    # Every pretrained weight is frozen.
    assert not any(p.requires_grad for n, p in model.named_parameters()
                   if "lora_" not in n and "modules_to_save" not in n)
    trainable, total = count_parameters(model)
    assert trainable < 0.05 * total


def test_head_is_under_one_percent_of_the_full_packaged_model() -> None:
    model = build_model(FedTextConfig(freeze="head", pooling="cls"), LABELS)  # all 6 layers
    trainable, total = count_parameters(model)
    assert total > 22_000_000
    assert 0 < trainable < 0.01 * total
    assert _trainable_groups(model) == {"pooler", "classifier"}


def test_packaged_model_mean_pools_by_default() -> None:
    """all-MiniLM-L6-v2 is a sentence-transformers checkpoint: pooling auto reads the token mean."""
    from common.pooled_model import MeanPoolingForSequenceClassification

    model = build_model(FedTextConfig(freeze="head"), LABELS)
    assert isinstance(model, MeanPoolingForSequenceClassification)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("freeze", ["none", "lora"])
def test_two_builds_with_one_seed_agree(freeze: str) -> None:
    cfg = FedTextConfig(num_hidden_layers=1, freeze=freeze)
    a, b = build_model(cfg, LABELS), build_model(cfg, LABELS)
    # The whole state (frozen checkpoint weights and newly initialised ones) agrees,
    # which is what lets only the trainable part travel.
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    ta, tb = trainable_state(a), trainable_state(b)
    assert list(ta) == list(tb)
    other = trainable_state(build_model(cfg.replace(seed=cfg.seed + 1), LABELS))
    assert any(not np.array_equal(ta[k], other[k]) for k in ta), "seed has no effect"


def test_trainable_state_is_a_float32_copy() -> None:
    model = model_for(freeze="head")
    state = trainable_state(model)
    assert all(v.dtype == np.float32 for v in state.values())
    state["classifier.bias"][:] = 123.0
    assert not torch.any(model.classifier.bias == 123.0)


def test_load_trainable_state_round_trip() -> None:
    model = copy.deepcopy(model_for(freeze="head"))
    state = {k: v + 1.0 for k, v in trainable_state(model).items()}
    load_trainable_state(model, state)
    for k, v in trainable_state(model).items():
        np.testing.assert_array_equal(v, state[k])


Corrupt = Callable[[dict[str, np.ndarray]], None]


def _drop(s: dict[str, np.ndarray]) -> None:
    del s["classifier.bias"]


def _extra(s: dict[str, np.ndarray]) -> None:
    s["bert.embeddings.word_embeddings.weight"] = np.zeros((2, 2), np.float32)


def _shape(s: dict[str, np.ndarray]) -> None:
    s["classifier.weight"] = s["classifier.weight"].T.copy()


def _nan(s: dict[str, np.ndarray]) -> None:
    s["bert.pooler.dense.bias"][3] = np.nan


def _inf(s: dict[str, np.ndarray]) -> None:
    s["classifier.weight"][0, 0] = -np.inf


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        (_drop, "missing 'classifier.bias'"),
        (_extra, "unexpected 'bert.embeddings.word_embeddings.weight'"),
        (_shape, "'classifier.weight' has shape"),
        (_nan, "'bert.pooler.dense.bias' holds NaN"),
        (_inf, "'classifier.weight' holds NaN or inf"),
    ],
)
def test_load_trainable_state_rejects_bad_arrays(corrupt: Corrupt, needle: str) -> None:
    model = copy.deepcopy(model_for(freeze="head"))
    before = trainable_state(model)
    state = {k: v.copy() for k, v in before.items()}
    corrupt(state)
    with pytest.raises(ValueError) as info:
        load_trainable_state(model, state, origin="train instruction")
    message = str(info.value)
    assert needle in message and message.startswith("train instruction:")
    assert "\n" not in message


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_lora_merge_gives_the_same_logits(pooling: str) -> None:
    from transformers import BertForSequenceClassification

    from common.pooled_model import MeanPoolingForSequenceClassification

    model = copy.deepcopy(model_for(freeze="lora", pooling=pooling))
    # Fresh LoRA B matrices are zero (a no-op adapter): make every trainable part non-trivial.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval()
    inputs = {"input_ids": torch.tensor([[101, 2023, 3185, 2001, 2307, 102]]),
              "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        peft_logits = model(**inputs).logits
        merged = copy.deepcopy(model).merge_and_unload()
        merged.eval()
        merged_logits = merged(**inputs).logits
    assert isinstance(merged, BertForSequenceClassification if pooling == "cls"
                      else MeanPoolingForSequenceClassification)
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-4, atol=1e-5)
    # The adapters matter: without them the logits differ.
    with torch.no_grad(), model.disable_adapter():
        plain_logits = model(**inputs).logits
    assert not torch.allclose(plain_logits, peft_logits, atol=1e-4)
