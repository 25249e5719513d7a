"""Which parameters train, and therefore which travel.

Policies (the ``freeze`` config key):

=============  ==============================================================
``none``       everything trains
``embeddings`` the embedding layer is frozen
``bottom:K``   embeddings + the first K encoder layers are frozen
``head``       only the pooler and the classifier train
``lora``       LoRA adapters (peft) on the attention projections + pooler and
               classifier; the pretrained weights are frozen
=============  ==============================================================

The pooler always trains when anything above it does: the packaged
sentence-transformers checkpoint has no trained pooler, so it is newly
initialised like the classifier.

:func:`trainable_state` and :func:`load_trainable_state` are the only way
parameters leave or enter a model: what a client sends and what the server
applies are exactly the parameters with ``requires_grad``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from common.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from common.config import FedTextConfig


def _encoder_parts(model: PreTrainedModel) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """The embeddings module and the list of encoder layers of a HF encoder."""
    base = model.base_model
    layers = None
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer"):
        obj = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            layers = list(obj)
            break
    embeddings = getattr(base, "embeddings", None)
    if embeddings is None or layers is None:
        raise ConfigError(
            f"config key 'freeze': cannot find embeddings/encoder layers in "
            f"{type(model).__name__}; use freeze=none or freeze=lora"
        )
    return embeddings, layers


def _set_trainable(module: torch.nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def apply_freezing(model: PreTrainedModel, cfg: FedTextConfig) -> PreTrainedModel:
    """Apply ``cfg.freeze`` and return the model to train (peft-wrapped for LoRA)."""
    policy = cfg.freeze
    if policy == "lora":
        return _wrap_lora(model, cfg)
    _set_trainable(model, True)
    if policy == "none":
        return model
    embeddings, layers = _encoder_parts(model)
    if policy == "embeddings":
        _set_trainable(embeddings, False)
    elif policy.startswith("bottom:"):
        k = int(policy.split(":", 1)[1])
        if k > len(layers):
            raise ConfigError(
                f"config key 'freeze': bottom:{k} but the model has {len(layers)} layers"
            )
        _set_trainable(embeddings, False)
        for layer in layers[:k]:
            _set_trainable(layer, False)
    elif policy == "head":
        _set_trainable(model.base_model, False)
        pooler = getattr(model.base_model, "pooler", None)
        if pooler is not None:
            _set_trainable(pooler, True)
    else:
        raise ConfigError(f"config key 'freeze': unknown policy {policy!r}")
    return model


def _wrap_lora(model: PreTrainedModel, cfg: FedTextConfig) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    head = ["pooler"] if getattr(model.base_model, "pooler", None) is not None else []
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # also keeps the classifier trainable
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        modules_to_save=head or None,
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
