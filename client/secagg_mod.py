"""Client half of secure aggregation: a Flower mod around the train handler.

A train instruction that carries a ``"secagg"`` ConfigRecord is one stage of a
SecAgg+ round (``common.secagg``; the stage table is in
``common/secagg/messages.py``):

=======  ==================================================================
stage 0  reply with fresh public keys
stage 1  Shamir-share the mask secrets among the neighbours, encrypted per peer
stage 2  run the train handler (the strategy's instruction rides along), then
         reply with the **masked** update: encode(update, weight) + masks
         mod 2^32, and the training diagnostics
stage 3  reveal the shares the server needs to remove the masks of the sum
=======  ==================================================================

Training happens in stage 2, as in Flower's own ``secaggplus_mod``: the update
is masked the moment it exists, so it is never kept between messages. (Kept
from a stage-0 training, it rode in ``context.state`` through stages 1 and 2:
an update-sized copy per sampled client in the simulation engine, shipped to
and from the actor or ``flwr-clientapp`` process on every exchange.) A client
whose training fails drops out at stage 2 and the survivors' shares unmask
the sum without it.

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
    array_names,
    from_array_record,
)
from common.messages import SECAGG_MASKED as MASKED

STATE = "fedtext.secagg"  # context.state: protocol state between stages


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
        reply = client.stage0(request)
        _save(context, client)
        return Message(RecordDict({SECAGG: ConfigRecord(reply)}), reply_to=msg)
    if STATE not in context.state.config_records:
        raise ValueError(f"secagg stage {stage}: no protocol state from stage 0 on this node")
    client = SecAggClient.from_state(dict(context.state.config_records[STATE]))
    if stage == 1:
        content = RecordDict({SECAGG: ConfigRecord(client.stage1(request))})
    elif stage == 2:
        masked = _train_and_mask(msg, context, call_next, client, request)
        if not masked.has_error():  # else a dropout at stage 2: the survivors' shares unmask the sum without it
            _save(context, client)
        return masked
    elif stage == 3:
        content = RecordDict({SECAGG: ConfigRecord(client.stage3(request))})
    else:
        raise ValueError(f"secagg: unknown stage {stage!r}")
    _save(context, client)
    return Message(content, reply_to=msg)


def _train_and_mask(
    msg: Message, context: Context, call_next: ClientAppCallable, client, request: dict  # noqa: ANN001
) -> Message:
    """Train, then reply to stage 2: the update under the mask, diagnostics in the clear (or the training's error).

    Once flattened, the handler's reply is let go, so that masking does not
    run beside a second update-sized copy.
    """
    trained = call_next(msg, context)
    if trained.has_error():
        return trained
    update = from_array_record(trained.content.array_records[ARRAYS])
    metrics = dict(trained.content.metric_records[METRICS])
    placement = trained.content.config_records.get(PLACEMENT)
    # The update is flattened in the order of the instruction's arrays, which is
    # the order the server unflattens the aggregate in.
    order = array_names(msg.content.array_records[ARRAYS])
    flat = np.concatenate([update[name].ravel() for name in order]).astype(np.float32, copy=False)
    del update, trained
    floor = int(msg.content.config_records[CONFIG].get(DP_NOISE_FLOOR, 0)) if CONFIG in msg.content.config_records else 0
    noise = _dp_noise(FedTextConfig.from_mapping(context.run_config), flat.size, floor)
    # The example count is aggregated under the mask with the update; only
    # training diagnostics travel in the clear.
    reply = client.stage2(request, flat, int(metrics.pop(NUM_EXAMPLES)), noise=noise)
    masked = reply.pop("masked")
    note(context, "sent", bytes=int(masked.nbytes), masked=True)
    content = RecordDict({SECAGG: ConfigRecord(reply), MASKED: ArrayRecord({"masked": Array(masked)}),
                          METRICS: MetricRecord(metrics)})
    if placement is not None:
        content[PLACEMENT] = placement
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
