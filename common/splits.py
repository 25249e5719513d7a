"""Who holds which rows of a federation's data.

- The server holds the test set: ``test-data``, or, when that is empty, a
  seeded ``test-fraction`` of ``data`` that no simulated client ever sees.
- A simulated client holds its partition of the rest (see ``common.partition``).
- Every client keeps ``client-eval-fraction`` of its rows aside to evaluate the
  global model on, and trains on the others.

Server and simulated clients each call these functions with the same config,
so they agree on the split without exchanging any data. ``fedtext simulate``
partitions once before the run and saves each client's share in the run folder
(:func:`write_client_shares`); a simulated client then memory-maps its own
share instead of loading and partitioning the whole file again
(:func:`simulated_client_data`), which keeps a message's data cost independent
of the corpus and of the number of clients.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from common.data import LabeledData, load_labeled, quiet_datasets
from common.errors import DataError
from common.partition import load_partition, partition_column

if TYPE_CHECKING:
    import datasets

    from common.config import FedTextConfig


# The config fields that decide which rows a client holds: equal fields, equal rows.
ROWS_FIELDS = ("data", "test_data", "text_column", "label_column", "labels", "max_examples", "max_test_examples",
               "test_fraction", "client_eval_fraction", "partition", "seed")
SHARES = "shares"  # folder of the run folder holding the clients' saved shares


def _load(cfg: FedTextConfig, path: str, label_names: list[str] | None) -> LabeledData:
    keep = partition_column(cfg.partition)
    return load_labeled(
        path, cfg.text_column, cfg.label_column, label_names, keep_columns=(keep,) if keep else ()
    )


def _cap(ds: datasets.Dataset, limit: int, seed: int) -> datasets.Dataset:
    return ds.shuffle(seed=seed).select(range(limit)) if 0 < limit < len(ds) else ds


def federation_labels(cfg: FedTextConfig) -> list[str] | None:
    """Declared labels, or ``None`` when they are to be read from the server's data."""
    return cfg.label_names or None


def server_test_set(cfg: FedTextConfig) -> LabeledData:
    """The server's evaluation data, with the federation's label names."""
    if cfg.test_data:
        test = load_labeled(cfg.test_data, cfg.text_column, cfg.label_column, federation_labels(cfg))
        return LabeledData(_cap(test.dataset, cfg.max_test_examples, cfg.seed), test.label_names, test.source)
    _, test = _split_pool(cfg)
    return test


def _split_pool(cfg: FedTextConfig, label_names: list[str] | None = None) -> tuple[LabeledData, LabeledData]:
    """(training pool, held-out test) of ``data`` when the server has no test file."""
    full = _load(cfg, cfg.data, label_names or federation_labels(cfg))
    parts = full.dataset.train_test_split(test_size=cfg.test_fraction, seed=cfg.seed)
    test = _cap(parts["test"], cfg.max_test_examples, cfg.seed)
    return (
        LabeledData(parts["train"], full.label_names, full.source),
        LabeledData(test, full.label_names, full.source),
    )


def training_pool(cfg: FedTextConfig, label_names: list[str]) -> LabeledData:
    """The rows of ``data`` that simulated clients share out (``max-examples`` applied)."""
    if cfg.test_data:
        pool = _load(cfg, cfg.data, label_names)
    else:
        pool, _ = _split_pool(cfg, label_names)
    return _capped_pool(cfg, pool)


def _capped_pool(cfg: FedTextConfig, pool: LabeledData) -> LabeledData:
    return LabeledData(_cap(pool.dataset, cfg.max_examples, cfg.seed), pool.label_names, pool.source)


def server_test_set_and_pool(cfg: FedTextConfig) -> tuple[LabeledData, LabeledData]:
    """:func:`server_test_set` and :func:`training_pool` from one read of the data.

    For the processes that need both (the simulation's pre-flight check, the
    centralized baseline); they get the same rows as the two calls would.
    """
    if cfg.test_data:
        test = server_test_set(cfg)
        return test, training_pool(cfg, test.label_names)
    pool, test = _split_pool(cfg)
    return test, _capped_pool(cfg, pool)


def client_share(
    cfg: FedTextConfig, pool: LabeledData, partition_id: int, num_partitions: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) rows of simulated client ``partition_id`` of ``pool``."""
    share = load_partition(pool.dataset, cfg.partition, num_partitions, partition_id, cfg.seed)
    return split_share(cfg, share, partition_id)


def split_share(
    cfg: FedTextConfig, share: datasets.Dataset, partition_id: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) of simulated client ``partition_id``'s share."""
    return local_split(share, cfg.client_eval_fraction, cfg.seed, f"partition {partition_id}")


def simulated_client_data(
    cfg: FedTextConfig, label_names: list[str], partition_id: int, num_partitions: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) rows of simulated client ``partition_id``: its saved share when the run has one."""
    share = saved_client_share(cfg, label_names, partition_id, num_partitions)
    if share is None:  # no saved shares (a run not started by `fedtext simulate`): partition again
        return client_share(cfg, training_pool(cfg, label_names), partition_id, num_partitions)
    return split_share(cfg, share, partition_id)


def _shares_manifest(cfg: FedTextConfig, label_names: list[str], num_partitions: int) -> dict:
    return {"rows": {f: getattr(cfg, f) for f in ROWS_FIELDS}, "labels": list(label_names),
            "clients": num_partitions}


def write_client_shares(cfg: FedTextConfig, shares: list[datasets.Dataset], label_names: list[str]) -> Path:
    """Save each simulated client's share under ``<out>/shares`` (Arrow files, read memory-mapped)."""
    folder = Path(cfg.out) / SHARES
    (folder / "manifest.json").unlink(missing_ok=True)  # no reader trusts a half-written set
    with quiet_datasets():
        for pid, share in enumerate(shares):
            share.flatten_indices().save_to_disk(str(folder / str(pid)))
    (folder / "manifest.json").write_text(json.dumps(_shares_manifest(cfg, label_names, len(shares))))
    return folder


def saved_client_share(
    cfg: FedTextConfig, label_names: list[str], partition_id: int, num_partitions: int
) -> datasets.Dataset | None:
    """Client ``partition_id``'s saved share, or None when the run folder has none for this config."""
    import datasets

    folder = Path(cfg.out) / SHARES
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest != json.loads(json.dumps(_shares_manifest(cfg, label_names, num_partitions))):
        return None  # shares of another config (e.g. a tuning trial that changed the rows)
    with quiet_datasets():
        return datasets.load_from_disk(str(folder / str(partition_id)))


def client_file_data(
    cfg: FedTextConfig, path: str, label_names: list[str]
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) rows of a deployed client's own file."""
    data = load_labeled(path, cfg.text_column, cfg.label_column, label_names)
    return local_split(_cap(data.dataset, cfg.max_examples, cfg.seed), cfg.client_eval_fraction, cfg.seed, path)


def local_split(
    ds: datasets.Dataset, eval_fraction: float, seed: int, what: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Keep ``eval_fraction`` of a client's rows (at least one) for evaluation."""
    if len(ds) < 2:
        raise DataError(f"{what}: {len(ds)} row(s); a client needs at least 2")
    n_eval = min(len(ds) - 1, max(1, round(len(ds) * eval_fraction))) if eval_fraction > 0 else 0
    if n_eval == 0:
        return ds, ds.select([])
    parts = ds.train_test_split(test_size=n_eval, seed=seed)
    return parts["train"], parts["test"]
