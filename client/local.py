"""What a client does with an instruction: load its data, train or evaluate, reply.

The client's rows come from its node config:

- ``data-path``: a deployed client's own file (``fedtext client --data``), with
  its own ``text-column`` / ``label-column`` when given;
- ``partition-id`` / ``num-partitions``: a simulated client's share of the run's
  ``data`` (``fedtext simulate``).

The text never leaves this module; the train reply carries the update of the
trainable parameters only.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from client import privacy as privacy_rules
from client.journal import note
from common.config import FedTextConfig
from common.errors import ConfigError
from common.freezing import load_trainable_state, trainable_state
from common.messages import Instruction, evaluate_reply, parse_instruction, train_reply
from common.model import (
    MODEL_FIELDS,
    build_model,
    load_tokenizer,
    pick_device,
    silence_transformers,
)
from common.privacy.distributed import clip_update
from common.privacy.dpsgd import train_private
from common.recipe import round_span
from common.splits import ROWS_FIELDS, client_file_data, simulated_client_data
from common.training import evaluate_model, train_model

if TYPE_CHECKING:
    import datasets
    from flwr.app import Context, RecordDict

log = logging.getLogger("fedtext.client")


def _config(context: Context) -> FedTextConfig:
    """The run's config; a deployed client's own column names take precedence.

    Each organisation names its columns as it likes: ``fedtext client
    --text-column`` puts them in the node config, over the server's defaults.
    """
    cfg = FedTextConfig.from_mapping(context.run_config)
    node = context.node_config
    columns = {key.replace("-", "_"): str(node[key]) for key in ("text-column", "label-column") if key in node}
    return cfg.replace(**columns) if columns else cfg


def _data_source(context: Context) -> tuple[str, int, int]:
    """(data path, partition id, number of partitions) from the node config."""
    node = context.node_config
    if "data-path" in node:
        return str(node["data-path"]), int(node.get("partition-id", 0)), 0
    if "partition-id" in node and "num-partitions" in node:
        return "", int(node["partition-id"]), int(node["num-partitions"])
    raise ConfigError(
        "node config: expected 'data-path' (deployment) or 'partition-id' and "
        "'num-partitions' (simulation)"
    )


# Simulated clients live in long-running Ray actors: keeping the model and the
# data between messages saves seconds per message. Every trainable parameter is
# overwritten by each instruction, so a cached model carries no state across.
# The caches are keyed by the fields that shape the model or pick the rows
# only (``MODEL_FIELDS``, ``ROWS_FIELDS``), so that tuning trials that change
# the lr or the rounds reuse them.
@functools.lru_cache(maxsize=2)
def _cached_model(key: FedTextConfig, label_names: tuple[str, ...]):  # noqa: ANN202
    silence_transformers()
    return build_model(key, list(label_names)), load_tokenizer(key)


def _model(cfg: FedTextConfig, label_names: tuple[str, ...]):  # noqa: ANN202
    return _cached_model(cfg.only(*MODEL_FIELDS), label_names)


@functools.lru_cache(maxsize=8)
def _cached_rows(
    key: FedTextConfig, label_names: tuple[str, ...], path: str, partition_id: int, partitions: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    if path:
        return client_file_data(key, path, list(label_names))
    return simulated_client_data(key, list(label_names), partition_id, partitions)


def _rows(
    cfg: FedTextConfig, label_names: tuple[str, ...], path: str, partition_id: int, partitions: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    # `out` too: a simulated client reads its saved share from the run folder.
    return _cached_rows(cfg.only(*ROWS_FIELDS, "out"), label_names, path, partition_id, partitions)


@dataclass(frozen=True)
class _Job:
    """An instruction with everything needed to carry it out on this node."""

    cfg: FedTextConfig
    instruction: Instruction
    train_rows: datasets.Dataset
    eval_rows: datasets.Dataset
    model: Any
    tokenizer: Any
    partition_id: int


def _prepare(content: RecordDict, context: Context, what: str) -> _Job:
    """Check the instruction, load this node's rows and the model with the global weights."""
    instruction = parse_instruction(content)
    cfg = _config(context).with_trial(instruction.trial)
    labels = tuple(instruction.label_names)
    path, pid, parts = _data_source(context)
    train_rows, eval_rows = _rows(cfg, labels, path, pid, parts)
    model, tokenizer = _model(cfg, labels)
    load_trainable_state(model, instruction.arrays, origin=f"{what} instruction")
    return _Job(cfg, instruction, train_rows, eval_rows, model, tokenizer, pid)


def train_locally(content: RecordDict, context: Context) -> RecordDict:
    """Handle a train instruction: fine-tune from the global weights, return the update."""
    job = _prepare(content, context, "train")
    cfg = job.cfg
    device = pick_device()
    how = {
        "seed": cfg.seed + 1000 * job.instruction.server_round + job.partition_id,
        "proximal_mu": job.instruction.proximal_mu or cfg.proximal_mu,
        "span": round_span(job.instruction.server_round, cfg.rounds, cfg.lr_schedule),
    }
    privacy: dict[str, float] = {}
    if cfg.dp == "record":
        plan, past = privacy_rules.record_level_round(context, cfg, len(job.train_rows), job.partition_id)
        result = train_private(job.model, job.train_rows, job.tokenizer, cfg, device, plan=plan, **how)
        spent = privacy_rules.record_steps(context, cfg, job.partition_id, past, plan, result.steps)
        privacy = privacy_rules.record_level_metrics(plan, spent, cfg)
    else:
        result = train_model(job.model, job.train_rows, job.tokenizer, cfg, device, **how)
    trained = trainable_state(job.model)
    sent = job.instruction.arrays
    update = {name: trained[name] - sent[name] for name in sent}
    weight = result.num_examples
    if cfg.dp == "client":
        # One client, one unit of influence: clipped, and weighted 1 whatever its rows.
        update, norm = clip_update(update, cfg.dp_clip)
        weight = 1
        log.info("client-level DP: update norm %.4f clipped to %g", norm, cfg.dp_clip)
    log.info(
        "round %d: trained on %d rows, %d steps, loss %.4f, %.1fs",
        job.instruction.server_round, result.num_examples, result.steps, result.loss, result.seconds,
    )
    import torch

    note(context, "train", round=job.instruction.server_round, rows=result.num_examples, steps=result.steps,
         loss=round(result.loss, 6), seconds=round(result.seconds, 2), threads=torch.get_num_threads(),
         **({"epsilon": round(privacy["dp-epsilon"], 4)} if "dp-epsilon" in privacy else {}))
    reply = train_reply(update, weight, result.loss, result.steps, result.seconds, ray_node=_ray_node())
    # Lets a run report where its clients trained (e.g. the GPU check).
    reply.metric_records["metrics"]["train-on-gpu"] = int(device.type == "cuda")
    if cfg.dp != "none":
        # A figure computed from the rows and sent in the clear would sit
        # outside the guarantee: only the accounting travels.
        del reply.metric_records["metrics"]["train-loss"]
    for key, value in privacy.items():
        reply.metric_records["metrics"][key] = float(value)
    return reply


def _ray_node() -> str | None:
    """The Ray node whose actor runs this client (a simulation), else None."""
    ray = sys.modules.get("ray")  # looked up, not imported: a deployed ClientApp never loads Ray
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def evaluate_locally(content: RecordDict, context: Context) -> RecordDict:
    """Handle an evaluate instruction: metrics of the global weights on local rows."""
    job = _prepare(content, context, "evaluate")
    metrics = evaluate_model(
        job.model, job.eval_rows, job.tokenizer, job.cfg, pick_device(), job.instruction.label_names
    )
    note(context, "evaluate", round=job.instruction.server_round, rows=len(job.eval_rows),
         accuracy=round(float(metrics["accuracy"]), 6))
    return evaluate_reply(metrics, len(job.eval_rows))
