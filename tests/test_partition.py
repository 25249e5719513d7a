"""Partitioning real Rotten Tomatoes rows among 2..10 simulated clients."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from common.partition import load_partition, make_partitioner, partition_column

SCHEMES = ["iid", "dirichlet:0.5", "column:movie_name"]
POOL_SIZE = 800


@pytest.fixture(scope="module")
def pool(rt_rows: list[dict[str, str]]):  # noqa: ANN201 - datasets.Dataset
    """800 real rows with a row id, labels as ints like load_labeled makes them."""
    import datasets

    rng = np.random.default_rng(0)
    picked = rng.choice(len(rt_rows), POOL_SIZE, replace=False)
    rows = [
        {"idx": int(i), "text": rt_rows[i]["text"], "label": int(rt_rows[i]["label"] == "rotten"),
         "movie_name": rt_rows[i]["movie_name"]}
        for i in picked
    ]
    return datasets.Dataset.from_list(rows)


def _col(ds, name: str) -> list:  # noqa: ANN001
    # A Column slice reads the whole column at once; iterating it reads row by row.
    return ds[name][:]


def _split(pool, scheme: str, n: int, seed: int = 42) -> list[list[int]]:  # noqa: ANN001
    """Every client's row ids, from one partitioner set up as load_partition does.

    Each simulated client builds its own partitioner (load_partition); doing it
    once per federation keeps this file fast, and
    test_independent_clients_agree checks that the two give the same shares.
    """
    partitioner = make_partitioner(scheme, n, seed)
    partitioner.dataset = pool.shuffle(seed=seed)
    return [partitioner.load_partition(pid)["idx"][:] for pid in range(n)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_independent_clients_agree(pool, scheme: str) -> None:  # noqa: ANN001
    n = 5
    alone = [load_partition(pool, scheme, n, pid, 42)["idx"][:] for pid in range(n)]
    assert alone == _split(pool, scheme, n)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", range(2, 11))
def test_partitions_disjoint_and_cover(pool, scheme: str, n: int) -> None:  # noqa: ANN001
    parts = _split(pool, scheme, n)
    ids = [i for part in parts for i in part]
    assert len(ids) == len(set(ids)), "a row is on two clients"
    assert all(len(p) >= 2 for p in parts), [len(p) for p in parts]
    if scheme != "dirichlet:0.5":  # Dirichlet may leave rows unassigned by design
        assert set(ids) == set(_col(pool, "idx"))
    else:
        assert set(ids) <= set(_col(pool, "idx"))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reproducible_with_seed(pool, scheme: str) -> None:  # noqa: ANN001
    first = _split(pool, scheme, 4, seed=7)
    again = _split(pool, scheme, 4, seed=7)
    other = _split(pool, scheme, 4, seed=8)
    assert first == again
    assert [sorted(p) for p in first] != [sorted(p) for p in other]


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_column_keeps_each_movie_on_one_client_and_balances(pool, n: int) -> None:  # noqa: ANN001
    movie_of = dict(zip(_col(pool, "idx"), _col(pool, "movie_name"), strict=True))
    owners: dict[str, set[int]] = {}
    parts = _split(pool, "column:movie_name", n)
    for client, part in enumerate(parts):
        for i in part:
            owners.setdefault(movie_of[i], set()).add(client)
    assert all(len(c) == 1 for c in owners.values()), "a movie is on two clients"
    largest_group = max(Counter(_col(pool, "movie_name")).values())
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= largest_group, (sizes, largest_group)


def _fresh_share_spread(pool, scheme: str, n: int) -> float:  # noqa: ANN001
    label_of = dict(zip(_col(pool, "idx"), _col(pool, "label"), strict=True))
    shares = [np.mean([label_of[i] for i in part]) for part in _split(pool, scheme, n)]
    return float(np.std(shares))


def test_dirichlet_gives_label_skew(pool) -> None:  # noqa: ANN001
    iid = _fresh_share_spread(pool, "iid", 6)
    skewed = _fresh_share_spread(pool, "dirichlet:0.5", 6)
    assert iid < 0.1  # ~130 rows per client: label shares within a few points
    assert skewed > 2 * iid and skewed > 0.15, (iid, skewed)


def test_too_few_column_values(pool) -> None:  # noqa: ANN001
    movies = {m for m, _ in Counter(_col(pool, "movie_name")).most_common(3)}
    few = pool.select([i for i, m in enumerate(_col(pool, "movie_name")) if m in movies])
    with pytest.raises(DataError, match="'movie_name' has 3 distinct values"):
        load_partition(few, "column:movie_name", 5, 0, 42)


def test_more_clients_than_rows(pool) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match="3 training rows"):
        load_partition(pool.select(range(3)), "iid", 4, 0, 42)


def test_dirichlet_with_too_many_clients_for_its_alpha_names_the_remedy(pool) -> None:  # noqa: ANN001
    # 400 clients of 2 rows on average: at alpha 0.1 some client gets almost nothing in every draw.
    with pytest.raises(DataError) as info:
        load_partition(pool, "dirichlet:0.1", 400, 0, 42)
    message = str(info.value)
    assert "\n" not in message
    assert "400 clients from 800 rows" in message and "raise alpha (e.g. dirichlet:0.2)" in message, message


@pytest.mark.parametrize("pid", [-1, 4, 10])
def test_partition_id_out_of_range(pool, pid: int) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="'partition-id'.*0..3"):
        load_partition(pool, "iid", 4, pid, 42)


def test_partition_column_helper() -> None:
    assert partition_column("column:movie_name") == "movie_name"
    assert partition_column("iid") is None
    assert partition_column("dirichlet:0.5") is None


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "column:movie_name"])
def test_one_partitioning_gives_every_client_the_share_it_would_compute_alone(pool, scheme: str) -> None:  # noqa: ANN001
    from common.partition import load_partitions

    shares = load_partitions(pool, scheme, 4, seed=3)
    for pid, share in enumerate(shares):
        assert share["text"] == load_partition(pool, scheme, 4, pid, seed=3)["text"]


def test_simulated_clients_read_the_shares_saved_for_their_run(tmp_path) -> None:  # noqa: ANN001
    from common.config import FedTextConfig
    from common.partition import load_partitions
    from common.splits import saved_client_share, simulated_client_data, training_pool, write_client_shares

    cfg = FedTextConfig(max_examples=200, partition="dirichlet:0.5", clients=3, out=str(tmp_path / "run"))
    labels = ["fresh", "rotten"]
    before = [simulated_client_data(cfg, labels, pid, 3) for pid in range(3)]  # nothing saved: partitions
    assert saved_client_share(cfg, labels, 0, 3) is None
    write_client_shares(cfg, load_partitions(training_pool(cfg, labels).dataset, cfg.partition, 3, cfg.seed), labels)
    for pid in range(3):
        assert saved_client_share(cfg, labels, pid, 3) is not None
        after = simulated_client_data(cfg, labels, pid, 3)
        assert [a["text"] for a in after] == [b["text"] for b in before[pid]]
    # Shares of another config are not used: other rows, other labels, other client count.
    assert saved_client_share(cfg.replace(seed=7), labels, 0, 3) is None
    assert saved_client_share(cfg, ["rotten", "fresh"], 0, 3) is None
    assert saved_client_share(cfg, labels, 0, 4) is None
