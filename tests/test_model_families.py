"""Every freezing policy and pooling works on every family users bring.

BERT, DistilBERT, RoBERTa, GPT-2 and Llama checkpoints (tiny, random, saved
locally with MiniLM's tokenizer): each policy freezes what it says, a training
step moves exactly the trainable weights, the pre-flight check (no weights)
agrees with the real build, and padding never changes a text's logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import FedTextConfig
from common.errors import ConfigError
from common.freezing import count_parameters, model_parts, trainable_state
from common.model import build_model, check_model, load_tokenizer
from common.training import train_model
from tests.model_families import FAMILIES, make_family_model

POLICIES = ("none", "embeddings", "bottom:1", "head", "lora")
LABELS = ["fresh", "rotten"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: make_family_model(family, root / family) for family in FAMILIES}


def _cfg(folder: Path, **changes: object) -> FedTextConfig:
    return FedTextConfig(model=str(folder), max_length=16, batch_size=4, local_steps=1,
                         warmup_ratio=0.0, lr=1e-2, **changes)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("freeze", POLICIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_policy_trains_exactly_its_parameters(
    family_dirs: dict[str, Path], sample_rows: list[dict[str, str]], family: str, freeze: str, pooling: str
) -> None:
    import datasets

    cfg = _cfg(family_dirs[family], freeze=freeze, pooling=pooling)
    model = build_model(cfg, LABELS)
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    # The pre-flight check builds the same structure without weights.
    assert f"{trainable:,} trainable" in check_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = datasets.Dataset.from_list([{"text": r["text"], "label": LABELS.index(r["label"])}
                                       for r in sample_rows[:8]])
    result = train_model(model, rows, load_tokenizer(cfg), cfg, torch.device("cpu"), seed=0)
    assert np.isfinite(result.loss)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved <= trains, sorted(moved - trains)[:3]  # nothing frozen moved
    assert moved, "no trainable weight moved"
    assert set(trainable_state(model)) == trains


@pytest.mark.parametrize("family", FAMILIES)
def test_parts_are_found_from_the_model(family_dirs: dict[str, Path], family: str) -> None:
    model = build_model(_cfg(family_dirs[family], pooling="cls"), LABELS)
    parts = model_parts(model)
    assert len(parts.blocks) == 2
    names = {n for n, _ in model.named_modules()}
    assert set(parts.embeddings) <= names and set(parts.head) <= names
    # Every parameter is in exactly one part.
    owners = [n for n, _ in model.named_parameters()]
    roots = parts.embeddings + parts.blocks + parts.head
    for name in owners:
        assert sum(name.startswith(r + ".") for r in roots) == 1, name
    # Attention projections: 4 linear maps per block (GPT-2 fuses q, k and v into one: 2).
    per_block = 2 if family == "gpt2" else 4
    assert len(parts.attention_projections) == 2 * per_block


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_a_texts_logits(family_dirs: dict[str, Path], family: str, pooling: str) -> None:
    """GPT-style checkpoints have no pad token id: fedtext supplies one, and masks it."""
    cfg = _cfg(family_dirs[family], pooling=pooling)
    model, tokenizer = build_model(cfg, LABELS), load_tokenizer(cfg)
    model.eval()
    short, longer = "a fine film", "a long, winding and rather tedious film about nothing at all"
    with torch.no_grad():
        alone = model(**tokenizer([short], return_tensors="pt", return_token_type_ids=False)).logits
        batch = tokenizer([short, longer], padding=True, return_tensors="pt", return_token_type_ids=False)
        padded = model(**batch).logits[0:1]
    torch.testing.assert_close(alone, padded, rtol=1e-4, atol=1e-5)


def test_bottom_beyond_the_blocks_fails_in_the_pre_flight_check(family_dirs: dict[str, Path]) -> None:
    for family in FAMILIES:
        with pytest.raises(ConfigError, match="bottom:3 but the model has 2 layers"):
            check_model(_cfg(family_dirs[family], freeze="bottom:3"))


def test_a_folder_that_is_not_a_model_fails_in_the_pre_flight_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config key 'model'"):
        check_model(FedTextConfig(model=str(tmp_path)))
