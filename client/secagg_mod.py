"""Client half of secure aggregation: a Flower mod around the train handler.

A train instruction that carries a ``"secagg"`` ConfigRecord is one stage of a
SecAgg+ round (``common.secagg``; the stage table is in
``common/secagg/messages.py``):

=======  ==================================================================
stage 0  run the train handler, keep its update in ``context.state`` (never
         sent), reply with fresh public keys (and the training metrics)
stage 1  Shamir-share the mask secrets among the neighbours, encrypted per peer
stage 2  reply with the **masked** update: encode(update, weight) + masks mod 2^32
stage 3  reveal the shares the server needs to remove the masks of the sum
=======  ==================================================================

Without that record (``--no-secagg``) the instruction passes straight through.
When the node config names an identity key and the trusted identities
(``fedtext client --identity --trusted-identities``), the advertisement is
signed and neighbours' advertisements must be signed by federation members.
In deployment every message runs in a fresh process: the protocol state lives
in ``context.state`` between stages, as plain data.
"""

from __future__ import annotations

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable

from client.journal import note
from common.config import FedTextConfig
from common.messages import (
    ARRAYS,
    CONFIG,
    DP_NOISE_FLOOR,
    METRICS,
    NUM_EXAMPLES,
    PLACEMENT,
    SECAGG,
    from_array_record,
)
from common.messages import SECAGG_MASKED as MASKED

STATE = "fedtext.secagg"  # context.state: protocol state between stages
UPDATE = "fedtext.secagg.update"  # context.state: the update awaiting masking
WEIGHT = "fedtext.secagg.weight"  # context.state: its example count


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run one SecAgg+ stage, or pass a plain instruction to the handler."""
    if SECAGG not in msg.content.config_records:
        return call_next(msg, context)
    from common.config import secagg_params
    from common.secagg import SecAggClient

    request = dict(msg.content.config_records[SECAGG])
    stage = int(request.get("stage", -1))
    params = secagg_params(FedTextConfig.from_mapping(context.run_config))
    if stage == 0:
        client = SecAggClient(context.node_id, params, **_identity(context))
        return _train_and_advertise(msg, context, call_next, client, request)
    if STATE not in context.state.config_records:
        raise ValueError(f"secagg stage {stage}: no protocol state from stage 0 on this node")
    client = SecAggClient.from_state(dict(context.state.config_records[STATE]))
    if stage == 1:
        reply = client.stage1(request)
        content = RecordDict({SECAGG: ConfigRecord(reply)})
    elif stage == 2:
        update, weight, floor = _take_update(context)
        noise = _dp_noise(FedTextConfig.from_mapping(context.run_config), update.size, floor)
        reply = client.stage2(request, update, weight, noise=noise)
        masked = reply.pop("masked")
        content = RecordDict({SECAGG: ConfigRecord(reply), MASKED: ArrayRecord({"masked": Array(masked)})})
        note(context, "sent", bytes=int(masked.nbytes), masked=True)
    elif stage == 3:
        content = RecordDict({SECAGG: ConfigRecord(client.stage3(request))})
    else:
        raise ValueError(f"secagg: unknown stage {stage!r}")
    _save(context, client)
    return Message(content, reply_to=msg)


def _train_and_advertise(
    msg: Message, context: Context, call_next: ClientAppCallable, client, request: dict  # noqa: ANN001
) -> Message:
    trained = call_next(msg, context)
    if trained.has_error():
        return trained
    update = from_array_record(trained.content.array_records[ARRAYS])
    metrics = dict(trained.content.metric_records[METRICS])
    # The update is flattened in the order of the instruction's arrays, which is
    # the order the server unflattens the aggregate in.
    order = list(msg.content.array_records[ARRAYS].keys())
    flat = np.concatenate([update[name].ravel() for name in order]).astype(np.float32)
    context.state[UPDATE] = ArrayRecord({"update": Array(flat)})
    floor = int(msg.content.config_records[CONFIG].get(DP_NOISE_FLOOR, 0)) if CONFIG in msg.content.config_records else 0
    context.state[WEIGHT] = ConfigRecord({"weight": int(metrics.pop(NUM_EXAMPLES)), "floor": floor})
    reply = client.stage0(request)
    _save(context, client)
    # The example count is aggregated under the mask with the update; only
    # training diagnostics travel in the clear.
    content = RecordDict({SECAGG: ConfigRecord(reply), METRICS: MetricRecord(metrics)})
    if PLACEMENT in trained.content.config_records:
        content[PLACEMENT] = trained.content.config_records[PLACEMENT]
    return Message(content, reply_to=msg)


def _identity(context: Context) -> dict:
    """Signing key and trusted keys from the node config (``fedtext client --identity``)."""
    from pathlib import Path

    from client.identity import IDENTITY_KEY, TRUSTED_IDENTITIES, load_identity

    node = context.node_config
    if IDENTITY_KEY not in node and TRUSTED_IDENTITIES not in node:
        return {}  # unsigned advertisements: the server is trusted not to swap keys
    key, trusted = load_identity(Path(str(node.get(IDENTITY_KEY, ""))), Path(str(node.get(TRUSTED_IDENTITIES, ""))))
    return {"identity_key": key, "trusted_identities": trusted}


def _take_update(context: Context) -> tuple[np.ndarray, int, int]:
    """The update kept at stage 0 (and its weight and DP noise floor); removed once masked."""
    if UPDATE not in context.state.array_records:
        raise ValueError("secagg stage 2: no update from stage 0 on this node")
    update = context.state.array_records[UPDATE]["update"].numpy()
    kept = context.state.config_records[WEIGHT]
    weight, floor = int(kept["weight"]), int(kept.get("floor", 0))
    del context.state[UPDATE]
    del context.state[WEIGHT]
    return update, weight, floor


def _dp_noise(cfg: FedTextConfig, size: int, floor: int) -> np.ndarray | None:
    """This client's share of client-level DP noise, in quantization levels (None without DP).

    Each of the round's at least ``floor`` survivors adds 1/floor of the
    variance, so the sum the server unmasks carries all of it (common/privacy/distributed.py).
    """
    if cfg.dp != "client":
        return None
    from common.privacy.distributed import (
        client_noise_variance,
        noise_multiplier,
        run_scale,
        skellam_noise,
    )

    if floor < 1:
        raise ValueError(f"secagg stage 2: dp client needs the instruction's '{DP_NOISE_FLOOR}' >= 1, got {floor}")
    variance = client_noise_variance(noise_multiplier(cfg, size), cfg.dp_clip, run_scale(cfg), floor)
    return skellam_noise(size, variance)


def _save(context: Context, client) -> None:  # noqa: ANN001
    context.state[STATE] = ConfigRecord(client.to_state())
