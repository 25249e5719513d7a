"""Split one dataset among simulated clients, reproducibly.

Schemes (the ``partition`` config key):

- ``iid``: uniform random split (flwr-datasets ``IidPartitioner``);
- ``dirichlet:ALPHA``: label skew, each client's label mix drawn from
  Dirichlet(ALPHA) (flwr-datasets ``DirichletPartitioner``); small ALPHA, more skew;
- ``column:NAME``: a natural split, every row with the same value of column NAME
  on the same client (e.g. all reviews of one movie). flwr-datasets'
  ``NaturalIdPartitioner`` makes one partition per value, which is not a federation
  of N clients, so :class:`BalancedNaturalIdPartitioner` assigns whole values to N
  clients, balancing their sizes.

Every simulated client calls :func:`load_partition` with the same seed and gets
its own, disjoint share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from common.data import quiet_datasets
from common.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets


class BalancedNaturalIdPartitioner(Partitioner):
    """Assign every distinct value of a column to one of ``num_partitions`` clients.

    Values are visited largest first (ties broken by a seeded shuffle) and each
    goes to the client that holds the fewest rows so far, which keeps clients
    within one value's size of each other.

    Parameters
    ----------
    num_partitions : int
        Number of clients.
    partition_by : str
        Column whose values must not be split across clients.
    seed : int
        Seed of the tie-breaking shuffle.
    """

    def __init__(self, num_partitions: int, partition_by: str, seed: int = 42) -> None:
        super().__init__()
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._seed = seed
        self._indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        """Number of partitions."""
        return self._num_partitions

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        """The rows of client ``partition_id``."""
        if self._indices is None:
            self._indices = self._assign()
        return self.dataset.select(self._indices[partition_id])

    def _assign(self) -> list[np.ndarray]:
        values = np.asarray([str(v) for v in self.dataset[self._partition_by]])
        unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        if len(unique) < self._num_partitions:
            raise DataError(
                f"partition column '{self._partition_by}' has {len(unique)} distinct "
                f"values; expected at least one per client ({self._num_partitions})"
            )
        rng = np.random.default_rng(self._seed)
        order = rng.permutation(len(unique))
        order = order[np.argsort(-counts[order], kind="stable")]
        owner = np.empty(len(unique), dtype=np.int64)
        load = np.zeros(self._num_partitions, dtype=np.int64)
        for value in order:
            client = int(np.argmin(load))
            owner[value] = client
            load[client] += counts[value]
        row_owner = owner[inverse]
        return [np.flatnonzero(row_owner == c) for c in range(self._num_partitions)]


MIN_DIRICHLET_ROWS = 2  # a client's train and held-out rows need at least one each


def make_partitioner(scheme: str, num_partitions: int, seed: int) -> Partitioner:
    """The flwr-datasets partitioner for a ``partition`` config value."""
    if scheme == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    kind, _, arg = scheme.partition(":")
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(arg),
            # Tiny shards make a client's local epoch a handful of steps; the
            # partitioner resamples until every client has this many rows.
            min_partition_size=MIN_DIRICHLET_ROWS,
            self_balancing=False,
            seed=seed,
        )
    if kind == "column":
        return BalancedNaturalIdPartitioner(num_partitions, arg, seed)
    raise ConfigError(f"config key 'partition': expected iid | dirichlet:ALPHA | column:NAME, got {scheme!r}")


def partition_column(scheme: str) -> str | None:
    """The extra column a scheme needs kept in the data, if any."""
    return scheme.split(":", 1)[1] if scheme.startswith("column:") else None


def load_partition(
    dataset: datasets.Dataset, scheme: str, num_partitions: int, partition_id: int, seed: int
) -> datasets.Dataset:
    """Client ``partition_id``'s share of ``dataset`` under ``scheme``."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node config 'partition-id': expected 0..{num_partitions - 1}, got {partition_id}"
        )
    return load_partitions(dataset, scheme, num_partitions, seed, [partition_id])[0]


def load_partitions(
    dataset: datasets.Dataset, scheme: str, num_partitions: int, seed: int, ids: list[int] | None = None
) -> list[datasets.Dataset]:
    """The shares of clients ``ids`` (all by default), from one partitioning of ``dataset``."""
    if len(dataset) < num_partitions:
        raise DataError(
            f"{len(dataset)} training rows cannot be split among {num_partitions} clients"
        )
    partitioner = make_partitioner(scheme, num_partitions, seed)
    # flwr-datasets partitioners split in row order: shuffle first so that a file
    # sorted by label or by date still gives an IID split. Flattening the shuffle
    # makes the partitioners' column reads contiguous (row-by-row reads through
    # an indices mapping cost seconds per client on the full corpus).
    with quiet_datasets():
        partitioner.dataset = dataset.shuffle(seed=seed).flatten_indices()
    try:
        return [partitioner.load_partition(pid) for pid in (range(num_partitions) if ids is None else ids)]
    except ValueError as exc:  # DirichletPartitioner gives up on impossible sizes
        if "max number of attempts" in str(exc):
            # With many clients and a small alpha, some client gets almost no rows in
            # every draw, whatever the corpus size: say which knob moves that.
            raise DataError(
                f"partition '{scheme}': {num_partitions} clients from {len(dataset)} rows left some client with "
                f"fewer than {MIN_DIRICHLET_ROWS} rows in each of 10 draws; raise alpha "
                f"(e.g. dirichlet:{2 * float(scheme.split(':')[1]):g}), use fewer clients, or partition iid"
            ) from exc
        raise DataError(f"partition '{scheme}' over {len(dataset)} rows: {exc}") from exc
