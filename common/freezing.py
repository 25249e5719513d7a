"""Which parameters train, and therefore which travel.

Policies (the ``freeze`` config key):

=============  ==============================================================
``none``       everything trains
``embeddings`` the input embeddings are frozen
``bottom:K``   the embeddings + the first K transformer blocks are frozen
``head``       only what sits above the last block trains: pooler, final
               norm, classifier
``lora``       LoRA adapters (peft) on the attention projections of every
               block + the head; every pretrained weight is frozen
=============  ==============================================================

The parts are found from the model itself (:func:`model_parts`), not from a
list of attribute names, so every policy works on every
``AutoModelForSequenceClassification`` architecture (BERT, DistilBERT,
RoBERTa, GPT-2, Llama...) and on fedtext's mean-pooling classifier:

- the **blocks** are the largest ``ModuleList`` of identical modules in the
  base model;
- the **embeddings** are the base model's child that holds the input
  embeddings (BERT's ``embeddings``, GPT-2's ``wte``), with every other
  embedding table outside the blocks (GPT-2's ``wpe``);
- the **head** is everything else: above the blocks (pooler, final norm) and
  outside the base model (classifier, DistilBERT's pre-classifier);
- the **attention projections** are the linear layers inside each block's
  attention module (the child whose class is an attention class).

The pooler trains whenever anything above it does: sentence-transformers
checkpoints have no trained pooler, so it is newly initialised like the
classifier.

:func:`trainable_state` and :func:`load_trainable_state` are the only way
parameters leave or enter a model: what a client sends and what the server
applies are exactly the parameters with ``requires_grad``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from common.config import FedTextConfig


@dataclass(frozen=True)
class ModelParts:
    """The parts of a classifier that freezing policies refer to (module names)."""

    embeddings: list[str]
    blocks: list[str]
    head: list[str]
    attention_projections: list[str]


def _blocks(base: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The base model's transformer blocks: its largest list of identical modules."""
    import torch

    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for name, module in base.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[0]):
            best = (size, name, module)
    return (best[1], best[2]) if best else None


def _is_attention(module: torch.nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "attention" in name or name.endswith("attn")


def _is_projection(module: torch.nn.Module) -> bool:
    """A linear map: ``nn.Linear``, or GPT-2's ``Conv1D`` (a transposed linear)."""
    import torch

    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def model_parts(model: torch.nn.Module) -> ModelParts:
    """Embeddings, blocks, head and attention projections of a classifier.

    Raises
    ------
    ConfigError
        When the model has no recognisable blocks or input embeddings.
    """
    import torch

    base = model.base_model
    prefix = next((n for n, m in model.named_modules() if m is base), "")
    full = (lambda n: f"{prefix}.{n}" if prefix else n)  # noqa: E731
    found = _blocks(base)
    inputs = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if found is None or inputs is None:
        what = "transformer blocks" if found is None else "input embeddings"
        raise ConfigError(
            f"config key 'freeze': cannot find the {what} of {type(model).__name__}; "
            "use freeze=none"
        )
    blocks_name, blocks = found
    block_names = [full(f"{blocks_name}.{i}") for i in range(len(blocks))]

    def inside(name: str, roots: list[str]) -> bool:
        return any(name == r or name.startswith(r + ".") for r in roots)

    # The base model's child that holds the input embeddings, and every other
    # embedding table outside the blocks.
    input_name = next(n for n, m in base.named_modules() if m is inputs)
    embeddings = [full(input_name.split(".")[0])]
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Embedding) and not inside(full(name), embeddings + block_names):
            embeddings.append(full(name))
    if inside(full(blocks_name), embeddings):
        raise ConfigError(
            f"config key 'freeze': the input embeddings and blocks of {type(model).__name__} "
            "are one module; use freeze=none or freeze=lora"
        )
    # The head: every parameter-holding module that is neither embeddings nor blocks,
    # named at the highest level that contains nothing else.
    taken = embeddings + block_names
    head: list[str] = []
    for name, module in model.named_modules():
        if not name or inside(name, taken) or inside(name, head):
            continue
        if not any(p.numel() for p in module.parameters()):
            continue
        if any(inside(t, [name]) for t in taken):
            continue  # an ancestor of the embeddings or blocks (the base model itself)
        head.append(name)
    attention = []
    for block_name, block in zip(block_names, blocks, strict=True):
        for name, module in block.named_modules():
            if name and _is_attention(module):
                attention += [
                    f"{block_name}.{name}.{leaf}" for leaf, sub in module.named_modules()
                    if leaf and _is_projection(sub)
                ]
    return ModelParts(embeddings, block_names, head, sorted(set(attention)))


def _set_trainable(model: torch.nn.Module, names: list[str], trainable: bool) -> None:
    modules = dict(model.named_modules())
    for name in names:
        for p in modules[name].parameters():
            p.requires_grad_(trainable)


def apply_freezing(model: PreTrainedModel, cfg: FedTextConfig) -> PreTrainedModel:
    """Apply ``cfg.freeze`` and return the model to train (peft-wrapped for LoRA).

    Raises
    ------
    ConfigError
        When the policy does not fit the model (``bottom:K`` beyond its blocks,
        LoRA on a model without attention projections...).
    """
    policy = cfg.freeze
    model.requires_grad_(True)
    if policy == "none":
        return model
    parts = model_parts(model)
    if policy == "lora":
        return _wrap_lora(model, cfg, parts)
    if policy == "embeddings":
        _set_trainable(model, parts.embeddings, False)
    elif policy.startswith("bottom:"):
        k = int(policy.split(":", 1)[1])
        if k > len(parts.blocks):
            raise ConfigError(
                f"config key 'freeze': bottom:{k} but the model has {len(parts.blocks)} layers"
            )
        _set_trainable(model, parts.embeddings + parts.blocks[:k], False)
    elif policy == "head":
        _set_trainable(model, parts.embeddings + parts.blocks, False)
    else:
        raise ConfigError(f"config key 'freeze': unknown policy {policy!r}")
    return model


def _wrap_lora(model: PreTrainedModel, cfg: FedTextConfig, parts: ModelParts) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    if not parts.attention_projections:
        raise ConfigError(
            f"config key 'freeze': lora finds no attention projections in the blocks of "
            f"{type(model).__name__}; use freeze=bottom:K or freeze=head"
        )
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        # Exact module names: peft matches a name or a dotted suffix of one.
        target_modules=parts.attention_projections,
        modules_to_save=parts.head,
    )
    return get_peft_model(model, config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def describe_parameters(model: torch.nn.Module, policy: str) -> str:
    """One line for logs: how much of the model trains (and travels)."""
    trainable, total = count_parameters(model)
    return (
        f"freeze={policy}: {trainable:,} trainable of {total:,} parameters "
        f"({100.0 * trainable / total:.2f}%)"
    )


def trainable_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Name -> float32 copy of every trainable parameter, in a fixed order."""
    return {
        name: p.detach().to("cpu", copy=True).float().numpy()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable_state(
    model: torch.nn.Module, state: dict[str, np.ndarray], origin: str = "message"
) -> None:
    """Overwrite the trainable parameters with ``state``.

    The names must be exactly the trainable ones, with matching shapes and
    finite values: anything else is a corrupt or mismatched peer message and
    is refused with a one-line error naming the offending array.
    """
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'"
        raise ValueError(
            f"{origin}: arrays do not match the trainable parameters ({what}; "
            f"{len(missing)} missing, {len(extra)} unexpected)"
        )
    with torch.no_grad():
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != tuple(p.shape):
                raise ValueError(
                    f"{origin}: array '{name}' has shape {value.shape}, expected {tuple(p.shape)}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{origin}: array '{name}' holds NaN or inf")
            p.copy_(torch.from_numpy(value).to(p.dtype))
