"""The fine-tuning recipe: the defaults that depend on other settings.

A federated run and its centralized baseline follow the same recipe, so that
the only difference between them is who holds the data:

- **one learning-rate schedule over the whole run**, not one per round. The
  run is a line from progress 0 (first step of round 1) to 1 (last step of the
  last round); the lr warms up over the first ``warmup-ratio`` of it and then
  decays (``lr-schedule``). A client's local run in round r of R covers
  progress ``[(r-1)/R, r/R]``; a centralized "round" covers the same span.
  Restarting warmup and decay in every round (``lr-schedule per-round``, the
  old behaviour) spends most of a short round at a fraction of the lr;
- **at least ``min-local-steps`` optimizer steps a round** (20): under FedAvg
  the global model moves by about one client's steps a round, so clients whose
  share of an epoch is a handful of steps repeat their rows instead
  (``common.training.planned_steps``);
- **the peak lr follows the freezing policy** when ``lr`` is 0 (the default):
  the fewer weights train, the larger the step they need;
- **mean pooling for sentence-transformers checkpoints** (``pooling auto``):
  they were trained so that the mean of the token states is the text's
  embedding; reading the CLS token through a newly initialised pooler throws
  that away (see ``common.pooled_model``).

The values below were chosen by measurement on several datasets and splits
(docs/TUNING.md says which runs and what they gave).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.config import FedTextConfig

LR_SCHEDULES = ("linear", "cosine", "constant", "per-round")
POOLINGS = ("auto", "cls", "mean")

# Peak AdamW lr per freezing policy, used when `lr` is 0.
DEFAULT_LR = {
    "none": 1e-4,
    "embeddings": 1e-4,
    "bottom": 3e-4,
    "lora": 1e-3,
    "head": 1e-2,
}


def peak_lr(cfg: FedTextConfig) -> float:
    """``lr``, or the freezing policy's default when it is 0."""
    if cfg.lr > 0:
        return cfg.lr
    return DEFAULT_LR[cfg.freeze.split(":", 1)[0]]


def lr_factor(progress: float, schedule: str, warmup: float) -> float:
    """Multiplier of the peak lr at ``progress`` in [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if schedule == "constant":
        return 1.0
    rest = (progress - warmup) / (1.0 - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    return max(0.0, 1.0 - rest)  # linear and per-round


def round_span(server_round: int, rounds: int, schedule: str) -> tuple[float, float]:
    """The part of the run's progress that round ``server_round`` of ``rounds`` covers."""
    if schedule == "per-round":
        return 0.0, 1.0
    rounds = max(rounds, server_round, 1)
    return (server_round - 1) / rounds, server_round / rounds


def step_lr_factors(span: tuple[float, float], steps: int, schedule: str, warmup: float) -> list[float]:
    """The lr multiplier of each of ``steps`` optimizer steps spread over ``span``.

    Each step takes the schedule's value at its midpoint, so no step is wasted
    at lr 0 and a span's steps average the schedule over the span.
    """
    start, end = span
    return [lr_factor(start + (end - start) * (i + 0.5) / steps, schedule, warmup) for i in range(steps)]


def is_sentence_transformer(model_path: str) -> bool:
    """Whether a model folder is a sentence-transformers checkpoint that mean-pools.

    Such a folder has ``modules.json`` listing a Pooling module whose
    ``config.json`` says ``pooling_mode_mean_tokens``.
    """
    folder = Path(model_path)
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return False
    for module in modules if isinstance(modules, list) else []:
        if str(module.get("type", "")).endswith("Pooling"):
            try:
                pooling = json.loads((folder / module.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                return False
            return bool(pooling.get("pooling_mode_mean_tokens"))
    return False


def resolved_pooling(cfg: FedTextConfig, model_path: str) -> str:
    """``cls`` or ``mean``: ``pooling``, with ``auto`` decided by the checkpoint."""
    if cfg.pooling != "auto":
        return cfg.pooling
    return "mean" if is_sentence_transformer(model_path) else "cls"
