"""End-to-end SecAgg+ rounds with real crypto: exact aggregates and dropouts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from common.secagg import (
    SecAggError,
    SecAggParams,
    quantization_error_bound,
    reference_weighted_mean,
    run_local_round,
)

M = 2000  # parameters per update: small keeps the suite fast


def _population(n: int, seed: int) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    rng = np.random.default_rng(seed)
    # Sparse ids over the whole uint64 range, like Flower's.
    ids = sorted({int(i) for i in rng.integers(0, 2**64, size=n, dtype=np.uint64)})
    assert len(ids) == n
    updates = {i: rng.uniform(-1.2, 1.2, M).astype(np.float32) for i in ids}
    weights = {i: int(rng.integers(1, 1500)) for i in ids}
    return updates, weights


def _check(result, params: SecAggParams, updates, weights, survivors: list[int]) -> None:
    assert result.survivors == sorted(survivors)
    expected_weight = sum(min(weights[i], params.max_weight) for i in survivors)
    assert result.total_weight == expected_weight
    expected = reference_weighted_mean([updates[i] for i in survivors], [weights[i] for i in survivors], params)
    bound = quantization_error_bound(params, len(survivors), expected_weight)
    assert result.mean_update.dtype == np.float32 and result.mean_update.shape == (M,)
    assert np.abs(result.mean_update - expected).max() <= bound


@pytest.mark.parametrize("n,k", [(3, 2), (5, 2), (5, 4), (10, 4), (10, 5), (10, 9)])
def test_unmasked_aggregate_equals_weighted_mean(n: int, k: int) -> None:
    params = SecAggParams(num_neighbours=k, threshold=0.6, clip=1.0, bits=20, max_weight=1000)
    updates, weights = _population(n, seed=n * 100 + k)
    result = run_local_round(params, updates, weights)
    _check(result, params, updates, weights, list(updates))


SPARSE = SecAggParams(num_neighbours=6, threshold=0.6, clip=1.0, bits=20, max_weight=1000)  # d=6, t=4


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_single_dropout_in_each_stage(stage: int) -> None:
    updates, weights = _population(12, seed=stage)
    victim = list(updates)[5]
    result = run_local_round(SPARSE, updates, weights, drop={victim: stage})
    # A node lost in stage 3 already uploaded its masked input, so it counts.
    survivors = [i for i in updates if i != victim or stage == 3]
    _check(result, SPARSE, updates, weights, survivors)


@pytest.mark.parametrize("stages", [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (0, 3)])
def test_two_dropouts_sparse_graph(stages: tuple[int, int]) -> None:
    updates, weights = _population(12, seed=sum(stages) + 40)
    ids = list(updates)
    drop = {ids[2]: stages[0], ids[7]: stages[1]}
    result = run_local_round(SPARSE, updates, weights, drop=drop)
    survivors = [i for i in ids if drop.get(i, 99) >= 3]
    _check(result, SPARSE, updates, weights, survivors)


def test_dropouts_in_all_four_stages_at_once() -> None:
    # Complete graph: U1=11 (d=10, t=6), U2=10, U3=8, U4=7, so every
    # survivor still has t=6 neighbours that return shares.
    params = SecAggParams(num_neighbours=11, threshold=0.6, clip=1.0, bits=20, max_weight=1000)
    updates, weights = _population(12, seed=7)
    ids = list(updates)
    drop = {ids[0]: 0, ids[1]: 1, ids[2]: 2, ids[3]: 3, ids[4]: 2}
    result = run_local_round(params, updates, weights, drop=drop)
    _check(result, params, updates, weights, [i for i in ids if drop.get(i, 99) >= 3])


def test_three_dropouts_at_stage_2_complete_graph() -> None:
    params = SecAggParams(num_neighbours=9, threshold=0.6, clip=1.0, bits=20, max_weight=1000)  # d=9, t=6
    updates, weights = _population(10, seed=99)
    ids = list(updates)
    result = run_local_round(params, updates, weights, drop={i: 2 for i in ids[:3]})
    _check(result, params, updates, weights, ids[3:])


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_fewer_than_t_survivors_is_a_clear_error(stage: int) -> None:
    # Complete graph over 5, t=3 of 5 holders; 3 drop, 2 remain: 2 holders.
    params = SecAggParams(num_neighbours=4, threshold=3, clip=1.0, bits=20, max_weight=1000)
    updates, weights = _population(5, seed=stage)
    ids = list(updates)
    with pytest.raises(SecAggError, match=re.escape(f"not enough survivors: got 2, need t=3 at stage {stage}")):
        run_local_round(params, updates, weights, drop={i: stage for i in ids[:3]})


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_three_clients_survive_one_dropout_at_any_stage(stage: int) -> None:
    # Each client also holds a share of its own secrets (d + 1 = 3 holders,
    # t = 2): the two survivors can rebuild the dropped key and their own
    # self-masks, so a 3-client federation survives losing one client.
    params = SecAggParams(num_neighbours=8, threshold=0.6, clip=1.0, bits=20, max_weight=1000)
    updates, weights = _population(3, seed=10 + stage)
    ids = list(updates)
    result = run_local_round(params, updates, weights, drop={ids[0]: stage})
    _check(result, params, updates, weights, ids if stage == 3 else ids[1:])


def test_fraction_threshold_adapts_to_stage0_dropouts() -> None:
    # With a fractional threshold the graph and t are built over the nodes that
    # advertised keys, so losing 2 of 5 in stage 0 still aggregates the other 3.
    params = SecAggParams(num_neighbours=4, threshold=0.6, clip=1.0, bits=20, max_weight=1000)
    updates, weights = _population(5, seed=3)
    ids = list(updates)
    result = run_local_round(params, updates, weights, drop={ids[0]: 0, ids[1]: 0})
    _check(result, params, updates, weights, ids[2:])


def test_large_update_roundtrip() -> None:
    params = SecAggParams(num_neighbours=4, threshold=0.6, clip=0.05, bits=24, max_weight=100)
    rng = np.random.default_rng(5)
    updates = {i: rng.normal(0, 0.01, 300_000).astype(np.float32) for i in range(1, 8)}
    weights = {i: 10 * i for i in updates}
    result = run_local_round(params, updates, weights, drop={3: 2})
    survivors = [i for i in updates if i != 3]
    expected = reference_weighted_mean([updates[i] for i in survivors], [weights[i] for i in survivors], params)
    bound = quantization_error_bound(params, len(survivors), result.total_weight)
    assert np.abs(result.mean_update - expected).max() <= bound


@pytest.mark.parametrize("stage", [1, 2])
def test_a_hundred_clients_with_a_tenth_dropping_mid_round(stage: int) -> None:
    # fedtext's defaults (8 neighbours, threshold 0.6) at the size of a large federation's round.
    params = SecAggParams(num_neighbours=8, threshold=0.6, clip=1.0, bits=24, max_weight=10000)
    updates, weights = _population(100, seed=1000 + stage)
    ids = list(updates)
    drop = {i: stage for i in ids[::10]}  # 10 of 100
    # A fixed round id fixes the neighbour graph: with a random one, about one
    # round in six gives some client 4 dropped share holders of 9, below t = 6,
    # and the protocol rightly aborts (a flaky test, not a bug).
    result = run_local_round(params, updates, weights, drop=drop, round_id=bytes([4]) * 16)
    _check(result, params, updates, weights, [i for i in ids if i not in drop])
