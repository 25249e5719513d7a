"""Benchmark fedtext's SecAgg+ against Flower's SecAgg+, side by side.

For every model size m and client count n it runs one real round of each
implementation in this process (real keys, Shamir shares, encrypted share
envelopes, masks) and reports:

* ``bytes/param`` of the masked upload: the stage-2 reply as it goes on the
  wire, i.e. the sum of ``deflate()`` over every object Flower 1.42 pushes for
  the reply ``Message`` (message, RecordDict, records, Array, ArrayChunks),
  divided by m. fedtext: the reply built by the real ``client.secagg_mod``
  (uint32 ArrayRecord + the ``secagg`` ConfigRecord). Flower: the reply built
  by the real ``flwr.client.mod.secaggplus_mod`` (int64 ``np.save`` bytes in a
  ConfigRecord + the emptied FitRes records). The whole-round upload of one
  client (replies of all four stages) is reported too.
* client masking time, in ms per 1M params: fedtext ``SecAggClient.stage2``
  (open shares, encode, self mask + pairwise masks); Flower
  ``secaggplus_mod._collect_masked_vectors`` (decrypt shares, weight, quantize,
  ``pseudo_rand_gen`` self + pairwise masks, mod, ``ndarray_to_bytes``).
  One representative client, timed ``--repeats`` times on fresh copies of its
  state; every client does the same work, so a round costs n times this.
* server unmasking with one client dropped after stage 1 (so its pairwise
  masks must be rebuilt from its reconstructed key): fedtext
  ``SecAggServer.finish``; Flower: the unmask loop of
  ``SecAggPlusWorkflow.unmask_stage`` done with Flower's own functions
  (``combine_shares``, ``pseudo_rand_gen``, ``generate_shared_key``,
  ``parameters_subtraction`` / ``_addition``, ``parameters_mod``,
  ``factor_extract``, ``dequantize``). The masked-sum step that precedes it is
  reported separately (``server_sum_s``).
* round wall time of fedtext with and without secure aggregation:
  ``run_local_round`` over n clients (sequential, state serialised between
  stages as in deployment) vs. the plain example-weighted mean of the same
  vectors (as ``server/aggregation.py`` does it).

Memory stays bounded: all clients share one update vector; fedtext's exact
unmasking round streams the masked vectors into a running sum (the server then
receives that sum once plus n-2 shared all-zero vectors, so its summation work
and its result are exact); ``run_local_round`` (which keeps every masked vector)
is replaced by that streamed driver when n * m * 4 bytes exceeds
``--round-mem-gb``; Flower's other clients mask a 1-element update when
n * m > ``--flower-verify-limit`` (only the shares matter for unmasking) and
the server then unmasks the representative's vector in place of the sum (the
unmasking work does not depend on the values; correctness is checked where the
real sum is built). Every such substitution is recorded in the JSON.

Timings are medians over repeats; a measurement stops repeating once it has
used ``--max-seconds`` (recorded as ``*_repeats``). The load average is
recorded before and after each case.

Usage::

    python -m simulations.bench_secagg --out bench.json                # full
    python -m simulations.bench_secagg --quick --out quick.json        # m=1M, n=5,10
    python -m simulations.bench_secagg --sizes 20000 --clients 3 5 --repeats 1 --out t.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from common.reports import command_line

NEIGHBOURS = 8  # fedtext's default k (common/config.py secagg-neighbours)
WEIGHT = 100  # num_examples of every client (below both max weights)
THRESHOLD_FRACTION = 0.6  # fedtext's default; given to Flower as reconstruction_threshold


# ------------------------------------------------------------------ helpers
def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Callable[[], Any], repeats: int, max_seconds: float,
          setup: Callable[[], Any] | None = None) -> tuple[float, list[float], Any]:
    """Median wall time of ``fn(setup())`` over up to ``repeats`` runs (>= 1)."""
    times: list[float] = []
    result = None
    spent = 0.0
    for _ in range(max(1, repeats)):
        arg = setup() if setup is not None else None
        start = time.perf_counter()
        result = fn(arg) if setup is not None else fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        if spent >= max_seconds:
            break
    return statistics.median(times), times, result


def wire_bytes(message: Any) -> int:
    """Bytes Flower 1.42 pushes for a Message: deflate() of every nested object."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def request_message(record_name: str, config: dict[str, Any], node: int) -> Any:
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    return Message(RecordDict({record_name: ConfigRecord(config)}), dst_node_id=node,
                   message_type=MessageType.TRAIN)


def reply_message(content: Any, request: Any) -> Any:
    from flwr.app import Message

    return Message(content, reply_to=request)


def config_reply_bytes(record_name: str, reply: dict[str, Any], request: Any) -> int:
    from flwr.app import ConfigRecord, RecordDict

    return wire_bytes(reply_message(RecordDict({record_name: ConfigRecord(reply)}), request))


def node_ids(n: int, seed: int) -> list[int]:
    """n distinct Flower-like node ids (positive, below 2**63 as sint64 needs)."""
    rng = random.Random(seed)
    ids: set[int] = set()
    while len(ids) < n:
        ids.add(rng.randrange(1, 1 << 63))
    return sorted(ids)


def dropped_node(ids: list[int]) -> int | None:
    """The client that drops after stage 1 (none below 4 clients: fedtext needs t+1 survivors)."""
    return ids[-1] if len(ids) >= 4 else None


# ------------------------------------------------------------------ fedtext
def fedtext_params(n: int):  # noqa: ANN201
    from common.config import FedTextConfig, secagg_params

    base = secagg_params(FedTextConfig())
    return dataclasses.replace(base, num_neighbours=max(2, min(NEIGHBOURS, n - 1)))


def fedtext_run_config(params) -> dict[str, Any]:  # noqa: ANN001
    from common.config import FedTextConfig

    mapping = dict(FedTextConfig().to_mapping())
    mapping["secagg-neighbours"] = params.num_neighbours
    return mapping


def fedtext_streamed_round(params, ids: list[int], update: np.ndarray, dropped: int | None,  # noqa: ANN001
                           rep: int) -> dict[str, Any]:
    """A whole round, driver-side, with masked vectors summed as they are produced."""
    from common.secagg import SecAggClient, SecAggServer
    from common.secagg import messages as msg

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    server = SecAggServer(params)
    clients = {i: SecAggClient(i, params) for i in ids}
    requests0 = server.stage0_requests(ids)
    replies0 = {i: clients[i].stage0(r) for i, r in requests0.items()}
    requests1 = server.stage1_requests(replies0)
    replies1 = {i: clients[i].stage1(r) for i, r in requests1.items()}
    requests2 = server.stage2_requests(replies1)
    out["rep_state_before_stage2"] = clients[rep].to_state()
    out["requests"] = {0: requests0[rep], 1: requests1[rep], 2: requests2[rep]}
    out["replies"] = {0: replies0[rep], 1: replies1[rep]}
    survivors = [i for i in ids if i != dropped]
    running: np.ndarray | None = None
    for i in survivors:
        reply = clients[i].stage2(requests2[i], update, WEIGHT)
        if running is None:
            running = reply[msg.MASKED]
        else:
            np.add(running, reply[msg.MASKED], out=running)
        del reply
    assert running is not None
    zeros = np.zeros_like(running)
    replies2 = {i: {msg.STAGE: 2, msg.MASKED: running if k == 0 else zeros} for k, i in enumerate(survivors)}
    t_sum = time.perf_counter()
    requests3 = server.stage3_requests(replies2)
    out["server_sum_s"] = time.perf_counter() - t_sum
    del replies2, running, zeros
    replies3 = {i: clients[i].stage3(r) for i, r in requests3.items()}
    out["replies"][3] = replies3[rep]
    out["requests"][3] = requests3[rep]
    out["server_before_finish"] = copy.deepcopy(server)
    t_fin = time.perf_counter()
    out["result"] = server.finish(replies3)
    out["server_finish_once_s"] = time.perf_counter() - t_fin
    out["round_s"] = time.perf_counter() - t0
    out["replies3"] = replies3
    out["degree"] = len(server.neighbours(rep))
    out["threshold"] = server.threshold
    return out


def plain_weighted_mean(updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """What the server does without secure aggregation (server/aggregation.py)."""
    summed = np.zeros(updates[0].size, dtype=np.float64)
    for u, w in zip(updates, weights):
        summed += w * u.astype(np.float64)
    return (summed / sum(weights)).astype(np.float32)


def bench_fedtext(m: int, n: int, update: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

    from client.secagg_mod import STATE, secagg_mod
    from common.messages import ARRAYS, SECAGG, train_reply
    from common.secagg import SecAggClient, quantization_error_bound, run_local_round

    params = fedtext_params(n)
    ids = node_ids(n, seed=n)
    rep, dropped = ids[0], dropped_node(ids)
    row: dict[str, Any] = {"impl": "fedtext", "m": m, "n": n, "k_requested": params.num_neighbours,
                           "bits": params.bits, "clip": params.clip, "max_weight": params.max_weight,
                           "modulus_bits": 32}

    # One exact round with one stage-2 dropout: server unmasking and correctness.
    rnd = fedtext_streamed_round(params, ids, update, dropped, rep)
    row["degree"], row["threshold"] = rnd["degree"], rnd["threshold"]
    survivors = n - (dropped is not None)
    row["dropouts"] = int(dropped is not None)
    err = float(np.abs(rnd["result"].mean_update - np.clip(update, -params.clip, params.clip)).max())
    bound = quantization_error_bound(params, survivors, survivors * WEIGHT)
    row["unmask_max_abs_error"] = err
    row["unmask_error_bound"] = bound
    row["verified"] = bool(err <= bound and rnd["result"].total_weight == survivors * WEIGHT)

    # Client masking: representative client, fresh state each repeat.
    state = rnd["rep_state_before_stage2"]
    req2 = rnd["requests"][2]
    med, times, reply2 = timed(lambda c: c.stage2(req2, update, WEIGHT), args.repeats, args.max_seconds,
                               setup=lambda: SecAggClient.from_state(state))
    row["client_stage2_s"] = med
    row["client_stage2_runs_s"] = times
    row["client_ms_per_1M"] = 1e3 * med / (m / 1e6)

    # Wire bytes: the stage-2 reply built by the real client.secagg_mod.
    ctx = Context(run_id=1, node_id=rep, node_config={}, state=RecordDict(),
                  run_config=fedtext_run_config(params))
    ctx.state[STATE] = ConfigRecord(state)
    request2 = request_message(SECAGG, req2, rep)
    request2.content[ARRAYS] = ArrayRecord({"update": Array(np.zeros_like(update))})  # the train instruction
    # Stage 2 trains, then masks: the handler stands in for training with the fixed update.
    reply = secagg_mod(request2, ctx, lambda msg, _: reply_message(train_reply({"update": update}, WEIGHT, 0.0, 1, 0.0),
                                                                   msg))
    masked_bytes = wire_bytes(reply)
    row["stage2_reply_bytes"] = masked_bytes
    row["bytes_per_param"] = masked_bytes / m
    stage_bytes = {2: masked_bytes}
    for stage in (0, 1, 3):  # as secagg_mod builds them
        stage_bytes[stage] = config_reply_bytes(SECAGG, rnd["replies"][stage],
                                                request_message(SECAGG, rnd["requests"][stage], rep))
    row["upload_bytes_by_stage"] = {str(s): stage_bytes[s] for s in sorted(stage_bytes)}
    row["round_upload_bytes_per_param"] = sum(stage_bytes.values()) / m
    del reply, reply2, ctx

    # Server: sum of the masked vectors (once) and finish (repeats, fresh copies).
    row["server_sum_s"] = rnd["server_sum_s"]
    snapshot, replies3 = rnd["server_before_finish"], rnd["replies3"]
    # Bound now (default arguments): the names are deleted below, which makes
    # a late-binding lambda read as an undefined name.
    med, times, _ = timed(lambda s, replies=replies3: s.finish(replies), args.repeats, args.max_seconds,
                          setup=lambda before=snapshot: copy.deepcopy(before))
    row["server_unmask_s"] = med
    row["server_unmask_runs_s"] = times
    row["server_unmask_note"] = (f"SecAggServer.finish, {survivors} survivors, "
                                 f"{row['dropouts']} dropped after stage 1")
    del rnd, snapshot, replies3

    # Round wall time with and without secure aggregation (no dropout).
    weights = {i: WEIGHT for i in ids}
    round_bytes = n * (m + 1) * 4
    if round_bytes <= args.round_mem_gb * 2**30:
        updates = {i: update for i in ids}
        med, times, res = timed(lambda: run_local_round(params, updates, weights), args.repeats, args.max_seconds)
        row["round_method"] = "run_local_round (state serialised between stages)"
    else:
        med, times, res = timed(lambda: fedtext_streamed_round(params, ids, update, None, rep)["result"],
                                args.repeats, args.max_seconds)
        row["round_method"] = (f"streamed driver (masked vectors summed as produced): n*m*4 = "
                               f"{round_bytes / 2**30:.1f} GiB > --round-mem-gb")
    assert np.abs(res.mean_update - np.clip(update, -params.clip, params.clip)).max() <= \
        quantization_error_bound(params, n, n * WEIGHT)
    row["round_secagg_s"] = med
    row["round_secagg_runs_s"] = times
    vectors = [update] * n
    med, times, _ = timed(lambda: plain_weighted_mean(vectors, [WEIGHT] * n), args.repeats, args.max_seconds)
    row["round_plain_s"] = med
    row["round_plain_runs_s"] = times
    row["round_overhead_x"] = row["round_secagg_s"] / row["round_plain_s"]
    return row


# ------------------------------------------------------------------- Flower
def flower_setup(n: int) -> tuple[Any, int, int]:
    """SecAggPlusWorkflow with its defaults, num_shares = k + 1 (k = fedtext's neighbours)."""
    from flwr.server.workflow import SecAggPlusWorkflow

    k = max(2, min(NEIGHBOURS, n - 1))
    workflow = SecAggPlusWorkflow(num_shares=k + 1, reconstruction_threshold=THRESHOLD_FRACTION)
    # SecAggPlusWorkflow.setup_stage: int num_shares is taken as is (made odd if < n),
    # a float threshold is round(fraction * num_shares), at least 2.
    num_shares = int(workflow.num_shares)
    if n != num_shares and num_shares % 2 == 0:
        num_shares += 1
    threshold = max(round(workflow.reconstruction_threshold * num_shares), 2)
    return workflow, num_shares, threshold


def flower_fit_reply(update: np.ndarray, request: Any) -> Any:
    """What a NumPyClient's fit returns, as the RecordDict the mod receives from call_next."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([update]), WEIGHT, {})
    return reply_message(fitres_to_recorddict(fitres, keep_input=True), request)


def bench_flower(m: int, n: int, update: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.client.mod import secaggplus_mod
    from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState, _collect_masked_vectors
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        RECORD_KEY_STATE,
        Key,
        Stage,
    )
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    workflow, num_shares, threshold = flower_setup(n)
    ids = node_ids(n, seed=n)
    rep, dropped = ids[0], dropped_node(ids)
    verify = n * m <= args.flower_verify_limit
    row: dict[str, Any] = {"impl": "flower", "m": m, "n": n, "num_shares": num_shares, "threshold": threshold,
                           "degree": num_shares - 1 if num_shares < n else n - 1,
                           "clip": workflow.clipping_range, "quantization_range": workflow.quantization_range,
                           "modulus_range": workflow.modulus_range, "max_weight": workflow.max_weight,
                           "verified": None}
    contexts = {i: Context(run_id=1, node_id=i, node_config={}, state=RecordDict(), run_config={}) for i in ids}

    def send(node: int, config: dict[str, Any], call_next=None):  # noqa: ANN001, ANN202
        request = request_message(RECORD_KEY_CONFIGS, config, node)
        reply = secaggplus_mod(request, contexts[node], call_next or (lambda *_: None))
        return request, reply

    # Stage 0 (setup), as SecAggPlusWorkflow.setup_stage sends it.
    setup = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: num_shares,
             Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: workflow.clipping_range,
             Key.TARGET_RANGE: workflow.quantization_range, Key.MOD_RANGE: workflow.modulus_range,
             Key.MAX_WEIGHT: workflow.max_weight}
    stage_bytes: dict[int, int] = {}
    pks: dict[int, list[bytes]] = {}
    for i in ids:
        request, reply = send(i, dict(setup))
        res = reply.content.config_records[RECORD_KEY_CONFIGS]
        pks[i] = [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]
        if i == rep:
            stage_bytes[0] = wire_bytes(reply)
    order = list(ids)
    random.Random(n).shuffle(order)
    half = num_shares >> 1
    neighbours = {nid: {order[(idx + off) % n] for off in range(-half, half + 1)} for idx, nid in enumerate(order)}

    # Stage 1 (share keys).
    fwd_src: dict[int, list[int]] = {i: [] for i in ids}
    fwd_ct: dict[int, list[bytes]] = {i: [] for i in ids}
    for i in ids:
        config: dict[str, Any] = {str(j): pks[j] for j in neighbours[i]}
        config[Key.STAGE] = Stage.SHARE_KEYS
        request, reply = send(i, config)
        res = reply.content.config_records[RECORD_KEY_CONFIGS]
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST]):
            fwd_src[dst].append(i)
            fwd_ct[dst].append(ct)
        if i == rep:
            stage_bytes[1] = wire_bytes(reply)

    def stage2_config(i: int) -> dict[str, Any]:
        return {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: fwd_ct[i], Key.SOURCE_LIST: fwd_src[i]}

    # Client masking: representative, on a fresh copy of its state each repeat.
    rep_state = dict(contexts[rep].state.config_records[RECORD_KEY_STATE])
    parameters = ndarrays_to_parameters([update])
    cfg2 = {k: v for k, v in stage2_config(rep).items() if k != Key.STAGE}

    def fresh_state() -> Any:
        state = SecAggPlusState(**copy.deepcopy(rep_state))
        state.current_stage = Stage.COLLECT_MASKED_VECTORS
        return state

    med, times, _ = timed(lambda s: _collect_masked_vectors(s, ConfigRecord(cfg2), WEIGHT, parameters),
                          args.repeats, args.max_seconds, setup=fresh_state)
    row["client_stage2_s"] = med
    row["client_stage2_runs_s"] = times
    row["client_ms_per_1M"] = 1e3 * med / (m / 1e6)

    # Stage 2 through the real mod: the representative's reply is measured on the wire.
    survivors = [i for i in ids if i != dropped]
    row["dropouts"] = n - len(survivors)
    tiny = np.zeros(1, dtype=np.float32)
    masked_bytes: dict[int, list[bytes]] = {}
    for i in survivors:
        vec = update if (i == rep or verify) else tiny
        request, reply = send(i, stage2_config(i), call_next=lambda msg, _ctx, v=vec: flower_fit_reply(v, msg))
        blobs = list(reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
        if i == rep:
            stage_bytes[2] = wire_bytes(reply)
        masked_bytes[i] = blobs
        del request, reply
    if not verify:  # others masked a 1-element update: stand in the representative's vector
        masked_bytes = {i: masked_bytes[rep] for i in survivors}
        row["server_input_note"] = ("other clients masked a 1-element update (shares only); the server "
                                    "sums/unmasks the representative's vector n-1 times (value-independent work)")
    row["stage2_reply_bytes"] = stage_bytes[2]
    row["bytes_per_param"] = stage_bytes[2] / m

    # Server: the summation of collect_masked_vectors_stage (once).
    start = time.perf_counter()
    masked_vector = None
    for i in survivors:
        vec_list = [bytes_to_ndarray(b) for b in masked_bytes[i]]
        masked_vector = vec_list if masked_vector is None else parameters_addition(masked_vector, vec_list)
    masked_vector = parameters_mod(masked_vector, workflow.modulus_range)
    row["server_sum_s"] = time.perf_counter() - start
    del masked_bytes

    # Stage 3 (unmask): survivors return shares.
    active, dead = set(survivors), set(ids) - set(survivors)
    collected: dict[int, list[bytes]] = {i: [] for i in ids}
    for i in survivors:
        config = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: list(neighbours[i] & active),
                  Key.DEAD_NODE_ID_LIST: list(neighbours[i] & dead)}
        request, reply = send(i, config)
        res = reply.content.config_records[RECORD_KEY_CONFIGS]
        for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST]):
            collected[owner].append(share)
        if i == rep:
            stage_bytes[3] = wire_bytes(reply)
    row["upload_bytes_by_stage"] = {str(s): stage_bytes[s] for s in sorted(stage_bytes)}
    row["round_upload_bytes_per_param"] = sum(stage_bytes.values()) / m

    def unmask(nbrs: dict[int, set[int]]) -> list[np.ndarray]:
        """SecAggPlusWorkflow.unmask_stage from the collected shares on, with Flower's functions."""
        vec = masked_vector
        for nid, share_list in collected.items():
            if len(share_list) < threshold:
                raise RuntimeError("Not enough shares to recover secret in unmask vectors stage")
            secret = combine_shares(share_list)
            if nid in active:
                vec = parameters_subtraction(vec, pseudo_rand_gen(secret, workflow.modulus_range,
                                                                  get_parameters_shape(vec)))
            else:
                peers = nbrs[nid]
                peers.remove(nid)
                for peer in peers:
                    key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(pks[peer][0]))
                    mask = pseudo_rand_gen(key, workflow.modulus_range, get_parameters_shape(vec))
                    vec = parameters_addition(vec, mask) if nid > peer else parameters_subtraction(vec, mask)
        vec = parameters_mod(vec, workflow.modulus_range)
        q_total_ratio, vec = factor_extract(vec)
        inv = workflow.quantization_range / q_total_ratio
        out = dequantize(vec, workflow.clipping_range, workflow.quantization_range)
        offset = -(len(active) - 1) * workflow.clipping_range
        for v in out:
            v += offset
            v *= inv
        return out

    med, times, out = timed(unmask, args.repeats, args.max_seconds,
                            setup=lambda: {k: set(v) for k, v in neighbours.items()})
    row["server_unmask_s"] = med
    row["server_unmask_runs_s"] = times
    row["server_unmask_note"] = (f"unmask loop of SecAggPlusWorkflow.unmask_stage, {len(survivors)} "
                                 f"survivors, {row['dropouts']} dropped after stage 1")
    if verify:
        err = float(np.abs(out[0] - np.clip(update, -workflow.clipping_range, workflow.clipping_range)).max())
        row["unmask_max_abs_error"] = err
        row["verified"] = bool(err < 1e-3)
    return row


# --------------------------------------------------------------------- main
def fmt_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'m':>11} {'n':>3} {'impl':<8} {'k':>2} {'t':>2} {'B/param':>8} {'round B/p':>9} "
            f"{'mask ms/1M':>10} {'stage2 s':>9} {'sum s':>7} {'unmask s':>9} {'rnd SA s':>9} "
            f"{'plain s':>8} {'ok':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rs = f"{r['round_secagg_s']:9.3f}" if "round_secagg_s" in r else f"{'-':>9}"
        rp = f"{r['round_plain_s']:8.3f}" if "round_plain_s" in r else f"{'-':>8}"
        lines.append(
            f"{r['m']:>11,d} {r['n']:>3} {r['impl']:<8} {r['degree']:>2} {r['threshold']:>2} "
            f"{r['bytes_per_param']:8.4f} {r['round_upload_bytes_per_param']:9.4f} "
            f"{r['client_ms_per_1M']:10.1f} {r['client_stage2_s']:9.3f} {r['server_sum_s']:7.3f} "
            f"{r['server_unmask_s']:9.3f} {rs} {rp} {str(r['verified']):>5}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="write the results as JSON here")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 22_700_000])
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="m=1M, n=5 and 10 (overrides --sizes/--clients)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop repeating a measurement once it has used this long (>= 1 run)")
    parser.add_argument("--round-mem-gb", type=float, default=2.0,
                        help="use run_local_round only if n*m*4 bytes fit in this")
    parser.add_argument("--flower-verify-limit", type=float, default=12e6,
                        help="every Flower client masks the full update (exact, verified sum) if n*m <= this")
    parser.add_argument("--skip-flower", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.clients = [1_000_000], [5, 10]
    if min(args.clients) < 3:
        parser.error("--clients must be >= 3 (one client drops in the unmasking benchmark)")

    import cryptography
    import flwr
    from flwr.supercore.task_identity import TaskIdentity

    # Messages built outside a running ServerApp need an identity, as in tests/conftest.py.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    started = time.time()
    report: dict[str, Any] = {
        "command": command_line("simulations.bench_secagg", argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version(), "numpy": np.__version__, "flwr": flwr.__version__,
                    "cryptography": cryptography.__version__},
        "load_avg_start": load(),
        "settings": {"repeats": args.repeats, "max_seconds": args.max_seconds, "weight": WEIGHT,
                     "fedtext_neighbours": f"min({NEIGHBOURS}, n-1)",
                     "flower_workflow": f"SecAggPlusWorkflow(num_shares=k+1, reconstruction_threshold="
                                        f"{THRESHOLD_FRACTION}), other arguments at their defaults",
                     "round_mem_gb": args.round_mem_gb, "flower_verify_limit": args.flower_verify_limit,
                     "timing": "median over repeats; client time = one representative client (all clients "
                               "do identical work, a sequential round costs n times it)"},
        "results": [],
    }
    for m in args.sizes:
        update = np.random.default_rng(m).uniform(-0.4, 0.4, m).astype(np.float32)
        for n in args.clients:
            for impl, bench in (("fedtext", bench_fedtext), ("flower", bench_flower)):
                if impl == "flower" and args.skip_flower:
                    continue
                before = load()
                t0 = time.perf_counter()
                row = bench(m, n, update, args)
                row["case_wall_s"] = time.perf_counter() - t0
                row["load_avg_before"], row["load_avg_after"] = before, load()
                report["results"].append(row)
                print(f"[{time.strftime('%H:%M:%S')}] m={m:,} n={n} {impl}: {row['bytes_per_param']:.4f} B/param, "
                      f"{row['client_ms_per_1M']:.1f} ms/1M, unmask {row['server_unmask_s']:.3f} s, "
                      f"case {row['case_wall_s']:.0f} s, load {row['load_avg_after']}", flush=True)
                with open(args.out, "w", encoding="utf-8") as fh:  # partial results survive a crash
                    json.dump(report, fh, indent=2)
    report["load_avg_end"] = load()
    report["wall_s"] = time.time() - started
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print()
    print(fmt_table(report["results"]))
    print(f"\nload average start {report['load_avg_start']} end {report['load_avg_end']}, "
          f"{os.cpu_count()} CPUs, wall {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
