"""Record-level DP: a client's local fine-tuning as DP-SGD, with Opacus.

Per optimizer step (Abadi et al., CCS 2016, as Opacus implements it):

1. **sample**: every local row joins the step's batch independently with
   probability q = expected batch / rows (Poisson sampling: the amplification
   the accountant assumes);
2. **clip**: Opacus computes each row's gradient of the trainable parameters
   and scales it to L2 norm at most ``dp-clip`` (where an embedding table
   trains, ghost clipping takes the same clipped sum without the per-row
   gradients: :func:`private_module`);
3. **noise**: the clipped gradients are summed, Gaussian noise of standard
   deviation sigma x clip is added, and the result is divided by the expected
   batch;
4. **step**: AdamW on that gradient, at the run's lr schedule (the FedProx
   term, which reads no data, is added after the noise).

A step's batch is processed in micro-batches of at most ``batch-size`` rows,
clipped one by one and noised once (Opacus' virtual steps), so the expected
batch can exceed what fits in memory. :func:`plan_for` calibrates sigma so that
``rounds`` rounds of these steps stay within ``dp-epsilon`` at ``dp-delta``.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import ConfigError
from common.privacy.accounting import Mechanism, calibrate
from common.recipe import peak_lr, step_lr_factors

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase

    from common.config import FedTextConfig
    from common.training import TrainResult


@dataclass(frozen=True)
class DpSgdPlan:
    """One client's DP-SGD settings for the whole run."""

    rows: int
    expected_batch: int
    steps_per_round: int
    rounds: int
    noise_multiplier: float
    clip: float

    @property
    def sample_rate(self) -> float:
        """q: the probability that a row joins a step's batch."""
        return self.expected_batch / self.rows

    def mechanism(self, steps: int) -> Mechanism:
        """``steps`` DP-SGD steps as one accounting event."""
        return Mechanism(self.noise_multiplier, self.sample_rate, steps)


def expected_batch(rows: int, cfg: FedTextConfig) -> int:
    """Rows a step samples on average: ``batch-size x grad-accum-steps``, at most all rows."""
    return max(1, min(rows, cfg.batch_size * cfg.grad_accum_steps))


def plan_for(rows: int, cfg: FedTextConfig) -> DpSgdPlan:
    """Calibrate a client's noise multiplier for ``rows`` rows and the run's rounds.

    Raises
    ------
    ConfigError
        When ``dp-delta`` is not below 1/rows or the target is unreachable.
    """
    from common.training import planned_steps

    if rows < 1:
        raise ConfigError("config key 'dp': record-level DP needs at least one training row")
    if cfg.dp_delta >= 1.0 / rows:
        raise ConfigError(
            f"config key 'dp-delta': expected below 1/n = {1.0 / rows:.3g} for a client of {rows} rows "
            f"(a larger delta allows releasing a row outright), got {cfg.dp_delta:g}"
        )
    batch = expected_batch(rows, cfg)
    steps = planned_steps(rows, cfg)
    sigma = _calibrated(batch / rows, steps * cfg.rounds, cfg.dp_epsilon, cfg.dp_delta, cfg.dp_accountant)
    return DpSgdPlan(rows, batch, steps, cfg.rounds, sigma, cfg.dp_clip)


@functools.lru_cache(maxsize=64)
def _calibrated(rate: float, steps: int, target: float, delta: float, kind: str) -> float:
    try:
        return calibrate(lambda s: [Mechanism(s, rate, steps)], target, delta, kind)
    except ValueError as exc:
        raise ConfigError(f"config key 'dp-epsilon': {exc} ({steps} steps at sampling rate {rate:.3g})") from None


def trains_embeddings(model: torch.nn.Module) -> bool:
    """Whether an embedding table of ``model`` trains (freeze=none): then :func:`train_private` ghost-clips."""
    import torch

    return any(isinstance(m, torch.nn.Embedding) and m.weight.requires_grad for m in model.modules())


@contextlib.contextmanager
def private_module(model: torch.nn.Module, ghost_clip: float | None = None) -> Iterator[torch.nn.Module]:
    """``model`` wrapped by Opacus' GradSampleModule; the hooks go when the block ends.

    ``ghost_clip``: wrap it for ghost clipping at that norm instead
    (``GradSampleModuleFastGradientClipping``): each row's gradient norm is
    computed without the row's gradient, and a second backward pass sums the
    clipped gradients. Per-row gradients of a 30,522 x 384 word embedding are
    47 MB a row; their norms are a few numbers.

    Position embeddings are looked up with one row of position ids shared by
    the whole batch, which would give one gradient for the batch instead of
    one per row: a pre-hook broadcasts such lookups to the batch (as a
    contiguous tensor).
    A simulated client caches its model between rounds, so nothing of Opacus
    may stay attached to it.
    """
    import torch
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    batch = {"size": 0}

    def per_row_lookup(module: torch.nn.Module, args: tuple) -> tuple | None:
        ids = args[0]
        if batch["size"] > 1 and ids.dim() >= 2 and ids.shape[0] == 1:
            ids = ids.expand(batch["size"], *ids.shape[1:])
        elif ids.is_contiguous():
            return None
        # Contiguous (BERT expands its token-type ids too): ghost clipping's
        # embedding norms take a view of the ids.
        return (ids.contiguous(), *args[1:])

    handles = [m.register_forward_pre_hook(per_row_lookup) for m in model.modules()
               if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad]
    if ghost_clip is None:
        wrapped = GradSampleModule(model, loss_reduction="mean", strict=True)
    else:
        wrapped = GradSampleModuleFastGradientClipping(model, loss_reduction="mean", strict=True,
                                                       max_grad_norm=ghost_clip, use_ghost_clipping=True)
    wrapped.fedtext_batch = batch
    try:
        with warnings.catch_warnings():
            # Opacus' hooks on the first layers, whose inputs (token ids) need
            # no gradient: torch says so once per backward, and it is expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield wrapped
    finally:
        wrapped._close()
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            for attr in ("grad_sample", "summed_grad", "_current_grad_sample", "_norm_sample", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)


def dp_optimizer(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, noise_multiplier: float,
                 clip: float, expected_batch: int) -> tuple[torch.optim.Optimizer, Any]:
    """Opacus' DP optimizer around ``optimizer`` for a module of :func:`private_module`.

    Returns it with, for a ghost-clipped module, the per-row loss to call on
    ``(logits, labels)``: its backward() runs both passes (None otherwise:
    the model's own loss serves).
    """
    import torch
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    ghost = isinstance(wrapped, GradSampleModuleFastGradientClipping)
    private = (DPOptimizerFastGradientClipping if ghost else DPOptimizer)(
        optimizer, noise_multiplier=noise_multiplier, max_grad_norm=clip,
        expected_batch_size=expected_batch, loss_reduction="mean",
    )
    if not ghost:
        return private, None
    return private, DPLossFastGradientClipping(wrapped, private, torch.nn.CrossEntropyLoss(), loss_reduction="mean")


def check_supported(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Pre-flight: Opacus can give every trainable parameter a per-row gradient.

    Raises
    ------
    ConfigError
        Naming the first layer it cannot handle.
    """
    import torch
    from opacus import GradSampleModule

    problems = GradSampleModule.validate(model, strict=False)
    if problems:
        raise ConfigError(f"config key 'dp': Opacus cannot train {type(model).__name__} with record-level DP: "
                          f"{str(problems[0]).splitlines()[0]}")
    from common.training import tokenize

    enc = tokenize(tokenizer, ["a short text", "another, slightly longer text"], 32)
    labels = torch.tensor([0, 1])
    try:
        with private_module(model) as wrapped:
            wrapped.fedtext_batch["size"] = 2
            model.train()
            wrapped(**enc, labels=labels).loss.backward()
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                sample = getattr(p, "grad_sample", None)
                if sample is None or sample.shape[0] != 2:
                    raise ConfigError(
                        f"config key 'dp': Opacus computes no per-row gradient for layer '{name}' of "
                        f"{type(model).__name__}; freeze it (e.g. freeze=bottom:K or lora) or use dp=client"
                    )
        model.zero_grad(set_to_none=True)
        if trains_embeddings(model):  # and the ghost-clipped pass train_private will take
            try:
                with private_module(model, ghost_clip=1.0) as wrapped:
                    wrapped.fedtext_batch["size"] = 2
                    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
                    _, per_row_loss = dp_optimizer(wrapped, sgd, noise_multiplier=0.0, clip=1.0, expected_batch=2)
                    per_row_loss(wrapped(**enc).logits, labels).backward()
            except (RuntimeError, ValueError, NotImplementedError) as exc:
                raise ConfigError(
                    f"config key 'dp': Opacus cannot ghost-clip {type(model).__name__}, whose embeddings train "
                    f"({str(exc).splitlines()[0]}); freeze them (freeze=embeddings) or use dp=client"
                ) from None
    finally:
        model.zero_grad(set_to_none=True)


def train_private(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cfg: FedTextConfig,
    device: torch.device,
    seed: int,
    plan: DpSgdPlan,
    proximal_mu: float = 0.0,
    span: tuple[float, float] = (0.0, 1.0),
    ghost: bool | None = None,
) -> TrainResult:
    """``plan.steps_per_round`` DP-SGD steps on ``dataset``; ``model`` trained in place.

    The counterpart of :func:`common.training.train_model` (same lr schedule,
    AdamW parameter groups and FedProx term); per-row clipping replaces the
    batch's gradient clipping, and training runs in float32. Where an
    embedding table trains, rows are ghost-clipped (:func:`private_module`):
    the same clipped sum, without per-row gradients (``ghost`` forces the
    choice, for comparisons).
    """
    import torch

    from common.training import TrainResult, adamw, tokenize

    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if proximal_mu > 0 else []
    peak = peak_lr(cfg)
    factors = step_lr_factors(span, plan.steps_per_round, cfg.lr_schedule, cfg.warmup_ratio)
    texts, labels = dataset["text"], np.asarray(dataset["label"])
    loss_sum, loss_count = 0.0, 0
    ghost = trains_embeddings(model) if ghost is None else ghost
    with private_module(model, ghost_clip=plan.clip if ghost else None) as wrapped:
        optimizer, per_row_loss = dp_optimizer(wrapped, adamw(model, peak, cfg.weight_decay),
                                               plan.noise_multiplier, plan.clip, plan.expected_batch)
        for factor in factors:
            for group in optimizer.param_groups:
                group["lr"] = peak * factor
            chosen = np.flatnonzero(rng.random(len(texts)) < plan.sample_rate)
            chunks = [chosen[i : i + cfg.batch_size] for i in range(0, len(chosen), cfg.batch_size)]
            if not chunks:  # an empty Poisson sample still takes a (noise-only) step
                for p in trainable:
                    if ghost:
                        p.grad = torch.zeros_like(p)
                    else:
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device)
            for i, idx in enumerate(chunks):
                enc = tokenize(tokenizer, [texts[j] for j in idx], cfg.max_length)
                wrapped.fedtext_batch["size"] = len(idx)
                inputs = {k: v.to(device) for k, v in enc.items()}
                y = torch.as_tensor(labels[idx], dtype=torch.long, device=device)
                if per_row_loss is not None:
                    loss = per_row_loss(wrapped(**inputs).logits, y)
                else:
                    loss = wrapped(**inputs, labels=y).loss
                loss.backward()
                loss_sum += float(loss.detach()) * len(idx)
                loss_count += len(idx)
                if i < len(chunks) - 1:  # clip this micro-batch's rows, noise once at the end
                    optimizer.signal_skip_step(do_skip=True)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if optimizer.pre_step():
                for p, a in zip(trainable, anchor, strict=False):
                    p.grad += proximal_mu * (p.detach() - a)
                optimizer.original_optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return TrainResult(
        num_examples=len(dataset),
        steps=plan.steps_per_round,
        loss=loss_sum / max(loss_count, 1),
        seconds=time.perf_counter() - start,
    )
