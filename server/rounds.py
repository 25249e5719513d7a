"""The federation, round by round: the whole server-side flow in one function.

For each round :func:`run_federation`

1. asks the strategy which clients train and builds their instructions
   (global trainable arrays + config, ``common.messages``);
2. has the aggregation send them and combine the replies into one mean update
   (``server.aggregation``: in the clear, or masked so that only the sum is seen);
3. lets the strategy turn that aggregate into the next global arrays
   (``server.aggregation.apply_update``);
   Under differential privacy (``server.privacy``) the round is first checked
   against the budget, its instructions carry the noise floor, and its
   aggregate is noised (or discarded) and accounted before step 3;
4. asks sampled clients to evaluate the new model on their held-out rows and,
   while they do, evaluates it on the server's test set (unless
   ``central-eval`` is off, as in tuning trials);
5. combines the clients' confusion matrices, records the round
   (``server.outputs``) and writes a checkpoint (``server.checkpoint``).

With ``resume`` set it first restores the global arrays, the strategy's state
and the recorded rounds from a checkpoint and continues with the next round.
Once the run is over (completed or failed), :func:`announce_end` tells every
connected node, so that deployed clients exit instead of polling a server that
is about to go away.

Flower's ``Strategy.start`` runs a similar loop, but it would send each
client's update to the strategy in the clear: fedtext's loop puts the
aggregation step between the clients and the strategy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from common.config import FedTextConfig
from common.messages import (
    ARRAYS,
    RUN_END,
    from_array_record,
    instruction_config,
    pack_instructions,
    parse_evaluate_reply,
    record_bytes,
    run_end_notice,
    to_array_record,
)
from common.metrics import metrics_from_confusion, summary
from common.splits import server_test_set
from server.aggregation import Aggregation, Laps, PlainAggregation, apply_update
from server.checkpoint import (
    Checkpoint,
    check_arrays,
    load_for_resume,
    restore_strategy,
    write_checkpoint,
)
from server.exchange import InFlight, exchange, send
from server.global_model import GlobalModel
from server.outputs import RunRecorder
from server.privacy import build_privacy
from server.secure_aggregation import SecureAggregation
from server.strategies import build_strategy

log = logging.getLogger("fedtext.server")


def run_federation(
    grid: Grid,
    cfg: FedTextConfig,
    aggregation: Aggregation | None = None,
    trial: dict[str, Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    model: GlobalModel | None = None,
) -> dict[str, Any]:
    """Train the global model for ``cfg.rounds`` rounds; write the run folder.

    Parameters
    ----------
    grid : Grid
        Flower's grid of connected nodes.
    cfg : FedTextConfig
        The federation's config (a tuning trial's: the run config with ``trial`` over it).
    aggregation : Aggregation, optional
        Defaults to SecAgg+ (or plain with ``secagg`` off).
    trial : dict, optional
        A tuning trial's config keys: clients apply them over the run config.
        A trial writes no checkpoint (it is run again, not resumed).
    on_round : callable, optional
        Sees each recorded round; may stop the federation by raising.
    model : GlobalModel, optional
        An already built global model at its initial weights (a tuning study
        reuses one across trials that build the same model).

    Returns
    -------
    dict
        The final central metrics.
    """
    aggregation = aggregation or (SecureAggregation(cfg) if cfg.secagg else PlainAggregation())
    test = server_test_set(cfg)
    labels = test.label_names
    model = model or GlobalModel(cfg, labels)
    log.info("%s", model.describe())
    log.info("aggregation: %s", "SecAgg+ (server sees only the sum)" if cfg.secagg else "plain (--no-secagg)")
    log.info("server test set: %d rows from %s; labels: %s", len(test), test.source, ", ".join(labels))
    strategy = build_strategy(cfg)
    privacy = build_privacy(cfg, model.sizes()["trainable_params"])
    # Restore from the checkpoint before the recorder rewrites metrics.json: a
    # refused resume must leave the run folder's history as it was.
    checkpoint = load_for_resume(cfg) if cfg.resume else None
    arrays = resume_from(checkpoint, model, strategy) if checkpoint else model.arrays()
    recorder = RunRecorder(cfg.out, cfg.to_mapping(), {"labels": labels, "model": model.sizes()},
                           plot_every_round=trial is None)
    timeout = cfg.round_timeout or None

    if checkpoint is None:
        central = model.evaluate(test) if cfg.central_eval else {}
        recorder.record_round(0, central, clients={})
    else:
        central = restore_history(recorder, checkpoint)
        privacy.restore(checkpoint.metrics.get("rounds", []))
    first = checkpoint.server_round + 1 if checkpoint else 1
    stopped = ""
    for server_round in range(first, cfg.rounds + 1):
        allowed, stopped = privacy.allows_round(server_round)
        if not allowed:
            log.warning("%s; the run stops here", stopped)
            break
        started = time.perf_counter()
        instructions = pack_instructions(list(
            strategy.configure_train(server_round, arrays, instruction_config(server_round, labels, trial), grid)
        ))
        privacy.prepare(instructions)
        update = privacy.finish(aggregation.collect(grid, instructions, from_array_record(arrays), timeout))
        if update.empty:
            log.warning("round %d: no client update arrived; global model unchanged", server_round)
        else:
            arrays = apply_update(strategy, server_round, arrays, update)
            model.load(arrays)
        laps = Laps(update.phases)
        # The clients evaluate on their held-out rows while the server evaluates on its test set.
        evaluating, eval_bytes = ask_clients_to_evaluate(grid, strategy, server_round, arrays, labels, timeout, trial)
        central = model.evaluate(test) if cfg.central_eval else {}
        laps.lap("central")
        evaluation = combine_evaluations(evaluating, labels)
        laps.lap("evaluate")
        clients: dict[str, Any] = {
            "trained": update.num_clients,
            "train_examples": update.total_examples,
            **({} if update.empty else {"train": update.train_metrics}),
            **evaluation,
        }
        if update.ray_nodes:
            clients["ray_nodes"] = update.ray_nodes
        if update.problems:
            clients["problems"] = update.problems
        recorder.record_round(
            server_round,
            central,
            clients,
            bytes_up=update.bytes_up,
            bytes_down=update.bytes_down + eval_bytes,
            seconds=time.perf_counter() - started,
            bytes_up_per_client=update.bytes_up // max(update.num_clients, 1),
            phases_s=laps.phases,
            **({"privacy": record} if (record := privacy.record()) else {}),
        )
        if trial is None:
            save_checkpoint(recorder, server_round, arrays, strategy, cfg)
        if on_round is not None:
            on_round(recorder.doc["rounds"][-1])
    model.save(recorder.out / "model")
    recorder.finish("completed", **({"stopped_early": stopped} if stopped else {}))
    return central


def resume_from(checkpoint: Checkpoint, model: GlobalModel, strategy: Any) -> Any:
    """Install a checkpoint's global arrays and strategy state (FedAdam's moments...).

    Returns
    -------
    ArrayRecord
        The global arrays to continue from.
    """
    arrays = to_array_record(check_arrays(checkpoint, from_array_record(model.arrays())))
    model.load(arrays)
    restore_strategy(strategy, checkpoint)
    log.info("resumed from %s after round %d", checkpoint.path, checkpoint.server_round)
    return arrays


def restore_history(recorder: RunRecorder, checkpoint: Checkpoint) -> dict[str, Any]:
    """Put the checkpoint's recorded rounds back into metrics.json; return the last central metrics."""
    resumed = [*checkpoint.metrics.get("resumed", []),
               {"after_round": checkpoint.server_round, "checkpoint": str(checkpoint.path)}]
    recorder.restore(checkpoint.metrics, resumed=resumed)
    return checkpoint.metrics.get("final_central", {})


def save_checkpoint(recorder: RunRecorder, server_round: int, arrays: Any, strategy: Any,
                    cfg: FedTextConfig) -> None:
    """Write ``OUT/checkpoint`` after a completed round (replacing the previous one)."""
    started = time.perf_counter()
    path = write_checkpoint(recorder.out, server_round, from_array_record(arrays), strategy, recorder.doc, cfg.to_mapping())
    log.info("round %d: checkpoint written to %s in %.1f s", server_round, path, time.perf_counter() - started)


def ask_clients_to_evaluate(
    grid: Grid,
    strategy: Any,
    server_round: int,
    arrays: Any,
    labels: list[str],
    timeout: float | None,
    trial: dict[str, Any] | None = None,
) -> tuple[InFlight, int]:
    """Send the strategy's evaluation instructions; the replies are collected by :func:`combine_evaluations`.

    Returns
    -------
    tuple[InFlight, int]
        The instructions in flight (none when the strategy asks nobody) and the bytes sent.
    """
    instructions: list[Message] = pack_instructions(list(
        strategy.configure_evaluate(server_round, arrays, instruction_config(server_round, labels, trial), grid)
    ))
    sent = sum(record_bytes(m.content.array_records[ARRAYS]) for m in instructions)
    return send(grid, instructions, timeout), sent


def combine_evaluations(evaluating: InFlight, labels: list[str]) -> dict[str, Any]:
    """Federated evaluation: the clients' confusion matrices summed into exact metrics.

    Returns
    -------
    dict
        ``{"evaluated": n, "evaluate": metrics}`` (empty when nobody was asked);
        replies that are errors or malformed are left out and listed under
        ``evaluate_problems``.
    """
    if not evaluating.asked:
        return {}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    loss_sum, count, evaluated, problems = 0.0, 0, 0, []
    for reply in evaluating.replies():
        node = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"node {node}: {reply.error.reason}")
            continue
        try:
            cm, loss, num = parse_evaluate_reply(reply.content, len(labels))
        except ValueError as exc:
            problems.append(f"node {node}: {exc}")
            continue
        confusion += cm
        loss_sum += loss * num
        count += num
        evaluated += 1
    for line in problems:
        log.warning("client evaluation left out: %s", line)
    result: dict[str, Any] = {"evaluated": evaluated}
    if count:
        metrics = metrics_from_confusion(confusion, labels)
        metrics["loss"] = loss_sum / count
        result["evaluate"] = {**summary(metrics), "num_examples": count}
    if problems:
        result["evaluate_problems"] = problems
    return result


def announce_end(grid: Grid, status: str, timeout: float = 30.0) -> int:
    """Tell every connected node that the run is over; return how many acknowledged.

    Waiting for the acknowledgements (``timeout`` at most) keeps the SuperLink
    up until the clients have heard: a deployed client pulls its messages every
    few seconds and exits on this one (``fedtext client``).
    """
    nodes = sorted(grid.get_node_ids())
    if not nodes:
        return 0
    notices = [Message(run_end_notice(status), dst_node_id=node, message_type=RUN_END) for node in nodes]
    replies = exchange(grid, notices, timeout)
    acknowledged = sum(not reply.has_error() for reply in replies)
    log.info("run %s: told %d of %d connected clients", status, acknowledged, len(nodes))
    return acknowledged
