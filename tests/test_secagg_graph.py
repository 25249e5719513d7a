"""Neighbour graph: deterministic, symmetric, regular; complete when k >= n - 1."""

from __future__ import annotations

import pytest

from common.secagg.graph import graph_degree, neighbour_graph


@pytest.mark.parametrize("n,k", [(5, 2), (10, 4), (11, 5), (12, 6), (30, 8), (7, 6), (7, 10)])
def test_graph_is_symmetric_regular_and_deterministic(n: int, k: int) -> None:
    ids = [1000 + 17 * i for i in range(n)]
    graph = neighbour_graph(ids, k, b"s" * 16)
    degree = graph_degree(n, k)
    assert degree == min(k + k % 2, n - 1)
    for u, peers in graph.items():
        assert u not in peers
        assert len(peers) == degree
        for v in peers:
            assert u in graph[v]
    assert neighbour_graph(list(reversed(ids)), k, b"s" * 16) == graph


def test_complete_graph_when_k_is_n_minus_1() -> None:
    ids = list(range(1, 9))
    graph = neighbour_graph(ids, 7, b"s" * 16)
    assert all(set(peers) == set(ids) - {u} for u, peers in graph.items())


def test_seed_changes_the_graph() -> None:
    ids = list(range(50))
    assert neighbour_graph(ids, 4, b"a" * 16) != neighbour_graph(ids, 4, b"b" * 16)


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(ValueError):
        neighbour_graph([1, 1, 2], 2, b"s" * 16)
