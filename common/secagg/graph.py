"""Deterministic neighbour graph of SecAgg+ (a randomly relabelled Harary graph).

The participating node ids are put in a pseudo-random order (sorted by
SHA-256(seed || id), the seed being the public round id) and each node is
joined to the d/2 nodes on either side of it on that ring, where d is the
requested number of neighbours rounded up to an even number. The result is an
undirected d-regular graph: every client has exactly d neighbours, which keeps
a single Shamir threshold meaningful for all of them. When d >= n - 1 the
graph is complete and the protocol is classic SecAgg (Bonawitz et al.).

Both the server and every client compute the graph from the same public data
(round id, sorted list of ids that advertised keys), so a client can check
that the server forwarded exactly its neighbours.
"""

from __future__ import annotations

from typing import Sequence

from cryptography.hazmat.primitives import hashes

from .primitives import node_id_bytes


def graph_degree(num_nodes: int, num_neighbours: int) -> int:
    """Degree d of every node: min(k rounded up to even, n - 1)."""
    even_k = num_neighbours + (num_neighbours % 2)
    return max(0, min(even_k, num_nodes - 1))


def _ring_order(node_ids: Sequence[int], seed: bytes) -> list[int]:
    def rank(node_id: int) -> bytes:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(seed)
        digest.update(node_id_bytes(node_id))
        return digest.finalize()

    return sorted(node_ids, key=lambda n: (rank(n), n))


def neighbour_graph(node_ids: Sequence[int], num_neighbours: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """Map each node id to the sorted tuple of its neighbours' ids.

    Parameters
    ----------
    node_ids : sequence of int
        Distinct participating node ids (order irrelevant).
    num_neighbours : int
        k from :class:`SecAggParams`.
    seed : bytes
        Public per-round seed (the round id).
    """
    ids = sorted(set(node_ids))
    if len(ids) != len(node_ids):
        raise ValueError("node ids must be distinct")
    n = len(ids)
    degree = graph_degree(n, num_neighbours)
    if degree >= n - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    ring = _ring_order(ids, seed)
    neighbours: dict[int, set[int]] = {u: set() for u in ids}
    for pos, u in enumerate(ring):
        for offset in range(1, degree // 2 + 1):
            v = ring[(pos + offset) % n]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return {u: tuple(sorted(vs)) for u, vs in neighbours.items()}
