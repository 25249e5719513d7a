"""Local fine-tuning and evaluation: the same code for clients, server and baseline.

A federated client, the server's central evaluation and ``fedtext centralized``
all call :func:`train_model` / :func:`evaluate_model`, so a federated figure and
its centralized baseline differ only in who holds the data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common.evaluate_metric import ClassificationMetrics
from common.metrics import metrics_from_confusion
from common.model import autocast, needs_grad_scaler
from common.recipe import peak_lr, step_lr_factors

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase

    from common.config import FedTextConfig


@dataclass(frozen=True)
class TrainResult:
    """What one local training run did."""

    num_examples: int
    steps: int
    loss: float
    seconds: float


def planned_steps(num_examples: int, cfg: FedTextConfig) -> int:
    """Optimizer steps of one local run: ``local-steps``, or epochs over the data.

    Epochs over a small client's rows are a few steps: under FedAvg the global
    model then moves by about that many steps a round, and a federation of
    small clients ends far short of centralized training on the same rows
    (docs/TUNING.md, the held-out debates). ``min-local-steps`` sets a floor.
    """
    if cfg.local_steps > 0:
        return cfg.local_steps
    per_epoch = math.ceil(num_examples / (cfg.batch_size * cfg.grad_accum_steps))
    return max(1, cfg.min_local_steps, math.ceil(per_epoch * cfg.local_epochs))


# A text's first max-length tokens lie within its first CHARS_PER_TOKEN x
# max-length characters unless it is unusually sparse (runs of whitespace or
# markup that make no tokens): BBC News articles have 3.2 to 5.6 characters a
# token under MiniLM's WordPiece (median 4.7).
CHARS_PER_TOKEN = 8


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """A batch of texts as model inputs, padded to its own longest text (not to max-length).

    Only the start of a long text is tokenized (:func:`text_head`): a tokenizer
    reads a whole text before truncating it, and a 2,000-character news article
    cut to 32 tokens spent most of its time on the rest (BBC News in batches of
    16: 0.34 s instead of 2.4 s at 32 tokens, 1.1 s instead of 2.0 s at 128).
    The result is the same as tokenizing the whole texts: the head ends at a
    space, so its words tokenize as in the whole text, and a batch where a cut
    head gives fewer than ``max_length`` tokens is tokenized again in full.
    """
    heads = [text_head(text, CHARS_PER_TOKEN * max_length) for text in texts]
    enc = _encode(tokenizer, heads, max_length)
    lengths = enc["attention_mask"].sum(dim=1).tolist() if "attention_mask" in enc else [0] * len(texts)
    if any(len(head) < len(text) and n < max_length for head, text, n in zip(heads, texts, lengths, strict=True)):
        enc = _encode(tokenizer, texts, max_length)
    return enc


def text_head(text: str, chars: int) -> str:
    """``text`` cut at its last space within ``chars`` characters (whole when it has none there)."""
    if len(text) <= chars:
        return text
    cut = text.rfind(" ", 0, chars + 1)
    return text if cut <= 0 else text[:cut]


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return dict(tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        # Single texts: token types are all 0, the default of the models
        # that use them, and some (DistilBERT) refuse the argument.
        return_token_type_ids=False,
        return_tensors="pt",
    ))


def iterate_batches(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    max_length: int,
    seed: int | None,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Tokenized batches, padded to their own longest text (not to max-length).

    ``seed=None`` keeps the dataset order (evaluation); otherwise each pass is a
    fresh seeded shuffle and the iterator never ends.
    """
    import torch

    texts, labels = dataset["text"], np.asarray(dataset["label"])
    rng = np.random.default_rng(seed)
    while True:
        order = np.arange(len(texts)) if seed is None else rng.permutation(len(texts))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield tokenize(tokenizer, [texts[i] for i in idx], max_length), torch.as_tensor(labels[idx], dtype=torch.long)
        if seed is None:
            return


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay on biases and LayerNorm gains only shrinks them towards 0 for no
    # regularisation benefit (the usual BERT fine-tuning recipe).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, fused where torch has the kernel for their device.

    The fused kernel updates all of a group's tensors in one pass: on this 2-core
    CPU a step over a 1-layer MiniLM's 13.5 M parameters (mostly the word
    embedding, which ``freeze=none`` trains) takes 10 ms instead of 71 ms.
    """
    import torch

    groups = parameter_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except RuntimeError:  # parameters on a device torch has no fused AdamW for
        return torch.optim.AdamW(groups, lr=lr)


def train_model(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cfg: FedTextConfig,
    device: torch.device,
    seed: int,
    proximal_mu: float = 0.0,
    span: tuple[float, float] = (0.0, 1.0),
) -> TrainResult:
    """Fine-tune ``model`` in place on ``dataset``.

    AdamW with gradient clipping and accumulation, mixed precision on CUDA.
    The lr follows the run's schedule (``common.recipe``) over ``span``, the
    part of the whole run's progress this local run covers (a client's round,
    a centralized epoch). With ``proximal_mu > 0`` the FedProx term
    ``mu/2 * ||w - w_start||^2`` over the trainable weights keeps the local
    model near the global one it started from.
    """
    import torch

    start = time.perf_counter()
    # Dropout draws from torch's global generator. A simulated client runs in a
    # Ray actor that may have served other clients before: seeding here makes a
    # client's round depend only on (seed, round, client), not on scheduling, so
    # runs repeat and a resumed run retraces an uninterrupted one.
    torch.manual_seed(seed)
    model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if proximal_mu > 0 else []
    total_steps = planned_steps(len(dataset), cfg)
    peak = peak_lr(cfg)
    factors = step_lr_factors(span, total_steps, cfg.lr_schedule, cfg.warmup_ratio)
    optimizer = adamw(model, peak, cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device) else None
    batches = iterate_batches(dataset, tokenizer, cfg.batch_size, cfg.max_length, seed)
    loss_sum, loss_count = 0.0, 0
    for factor in factors:
        for group in optimizer.param_groups:
            group["lr"] = peak * factor
        for _ in range(cfg.grad_accum_steps):
            inputs, labels = next(batches)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with autocast(device):
                loss = model(**inputs, labels=labels.to(device)).loss
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(trainable, anchor, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            loss_sum += float(loss.detach()) * len(labels)
            loss_count += len(labels)
            loss = loss / cfg.grad_accum_steps
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return TrainResult(
        num_examples=len(dataset),
        steps=total_steps,
        loss=loss_sum / max(loss_count, 1),
        seconds=time.perf_counter() - start,
    )


def by_length(dataset: datasets.Dataset) -> datasets.Dataset:
    """The rows from the shortest text to the longest.

    A batch is padded to its longest text: batches of similar lengths pad little
    (Rotten Tomatoes: evaluation 1.9x faster). Only for evaluation, whose figures
    do not depend on the order of the rows.
    """
    lengths = np.fromiter((len(t) for t in dataset["text"]), dtype=np.int64, count=len(dataset))
    return dataset.select(np.argsort(lengths, kind="stable"))


def evaluate_model(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cfg: FedTextConfig,
    device: torch.device,
    label_names: list[str],
) -> dict[str, Any]:
    """Loss, accuracy, precision/recall/F1 and confusion matrix on ``dataset``."""
    import torch

    if len(dataset) == 0:  # e.g. client-eval-fraction = 0: nothing to score
        empty = np.zeros((len(label_names), len(label_names)), dtype=np.int64)
        return {**metrics_from_confusion(empty, label_names), "loss": 0.0}
    model.to(device)
    model.eval()
    metric = ClassificationMetrics(label_names)
    loss_sum = 0.0
    batch = max(cfg.batch_size, 32)  # no gradients: larger batches are free
    with torch.no_grad():
        for inputs, labels in iterate_batches(by_length(dataset), tokenizer, batch, cfg.max_length, None):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with autocast(device):
                out = model(**inputs, labels=labels.to(device))
            loss_sum += float(out.loss) * len(labels)
            metric.add_batch(predictions=out.logits.argmax(-1).cpu().numpy(), references=labels.numpy())
    result = metric.compute()
    result["loss"] = loss_sum / max(len(dataset), 1)
    return result
