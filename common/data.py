"""Labeled text in, validated ``datasets.Dataset`` out.

Every file a user hands fedtext (a client's private data, the server's test set,
the data a simulation splits) is read by :func:`load_labeled`. It returns a
dataset with an int ``label`` column and a string ``text`` column, or raises a
:class:`~common.errors.DataError` whose one line names the file, the row or
column at fault and what was expected. Rows are numbered from 1, header excluded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import DataError
from common.packaged import PREFIX, packaged_dataset

if TYPE_CHECKING:
    import datasets

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json",
           ".parquet": "parquet"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst")


@dataclass(frozen=True)
class LabeledData:
    """Validated labeled text.

    Attributes
    ----------
    dataset : datasets.Dataset
        ``text`` (str) and ``label`` (int id into ``label_names``) columns, plus
        any extra columns that were asked to be kept.
    label_names : list[str]
        Label names in id order.
    source : str
        The file it came from, for messages.
    """

    dataset: datasets.Dataset
    label_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.dataset)


def read_table(path: str | os.PathLike[str]) -> datasets.Dataset:
    """Read a CSV/TSV, JSON lines, parquet file, saved ``datasets`` folder or
    packaged corpus (``packaged:rotten_tomatoes``, ``packaged:bbc_news``).

    Raises
    ------
    DataError
        When the path is missing, empty, of an unknown format, not UTF-8 text
        or not parseable.
    """
    import datasets

    if str(path).startswith(PREFIX):
        return packaged_dataset(str(path)[len(PREFIX):])
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file '{p}': not found")
    if p.is_dir():
        return _load_saved_dataset(p)
    if p.stat().st_size == 0:
        raise DataError(f"data file '{p}': empty file (expected a header and rows)")
    builder = _builder_for(p)
    kwargs: dict[str, Any] = {"data_files": str(p), "split": "train"}
    if ".tsv" in (s.lower() for s in p.suffixes):
        kwargs["sep"] = "\t"
    try:
        with quiet_datasets():
            ds = datasets.load_dataset(builder, **kwargs)
    except Exception as exc:  # datasets wraps parser errors in its own types
        raise DataError(f"data file '{p}': {_explain_read_error(exc, builder)}") from exc
    if len(ds) == 0:
        raise DataError(f"data file '{p}': no rows (expected a header and rows)")
    return ds


def _builder_for(p: Path) -> str:
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in FORMATS:
        raise DataError(
            f"data file '{p}': unknown format (expected .csv, .tsv, .jsonl, .json, "
            ".parquet or a saved datasets folder)"
        )
    return FORMATS[suffixes[-1]]


def _load_saved_dataset(p: Path) -> datasets.Dataset:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise DataError(
            f"data folder '{p}': not a saved datasets folder ({_first_line(exc)})"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise DataError(
                f"data folder '{p}': has splits {sorted(loaded)}; expected one split "
                "or a 'train' split"
            )
    if len(loaded) == 0:
        raise DataError(f"data folder '{p}': no rows")
    return loaded


def _explain_read_error(exc: BaseException, builder: str) -> str:
    for cause in _causes(exc):
        if isinstance(cause, UnicodeDecodeError):
            return (
                f"not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at offset "
                f"{cause.start} of a chunk); re-save the file as UTF-8"
            )
        # A CSV with a header and no rows gives datasets no table at all, so it
        # fails here rather than reaching the len(ds) == 0 check of read_table.
        if "corresponds to no data" in str(cause):
            return "no rows (expected a header and rows)"
    return f"cannot be read as {builder} ({_first_line(_causes(exc)[-1])})"


def _causes(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt in chain:
            break
        chain.append(nxt)  # type: ignore[arg-type]
    return chain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class quiet_datasets:
    """Silence datasets' progress bars and error logs while it reads a file.

    A file it cannot read becomes fedtext's own one-line error; datasets'
    "Failed to read file" log line would be a second one.
    """

    def __enter__(self) -> None:
        import datasets

        self._was_enabled = datasets.utils.logging.is_progress_bar_enabled()
        self._verbosity = datasets.utils.logging.get_verbosity()
        datasets.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        import datasets

        datasets.utils.logging.set_verbosity(self._verbosity)
        if self._was_enabled:
            datasets.utils.logging.enable_progress_bar()


# --- labels --------------------------------------------------------------------


def label_to_name(value: Any) -> str:
    """Labels travel and are stored as names; ints and strings both become text."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def discover_labels(
    ds: datasets.Dataset, label_column: str, source: str, min_distinct: int = 2
) -> list[str]:
    """Sorted distinct label names of a dataset (numeric order when all are ints).

    A federation needs two labels, but one client may well hold a single one:
    ``min_distinct`` says which of the two is being checked.
    """
    _require_columns(ds, [label_column], source)
    names = {label_to_name(v) for v in ds[label_column] if v is not None}
    names.discard("")
    if len(names) < min_distinct:
        raise DataError(
            f"data file '{source}': column '{label_column}' has {len(names)} distinct "
            f"label(s); expected at least {min_distinct}"
        )
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _require_columns(ds: datasets.Dataset, columns: list[str], source: str) -> None:
    for column in columns:
        if column not in ds.column_names:
            raise DataError(
                f"data file '{source}': no column '{column}' "
                f"(columns: {', '.join(ds.column_names)})"
            )


# --- the one entry point -------------------------------------------------------


def load_labeled(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    keep_columns: tuple[str, ...] = (),
    min_distinct_labels: int = 2,
) -> LabeledData:
    """Read and validate a labeled text file.

    Parameters
    ----------
    path : str or PathLike
        CSV/TSV, JSONL, parquet file, or saved ``datasets`` folder.
    text_column, label_column : str
        Where the text and the label are.
    label_names : list[str], optional
        The federation's label set, in id order. Every label must be one of
        them. When ``None`` the sorted labels found in the file are used.
    keep_columns : tuple[str, ...]
        Extra columns to keep (e.g. the one a ``column:NAME`` split uses).
    min_distinct_labels : int
        When labels are read from the file, how many it must hold (a single
        client's file may hold only one).

    Raises
    ------
    DataError
        Naming the file and, where it applies, the row or column at fault.
    """
    source = str(path)
    raw = read_table(path)
    _require_columns(raw, [text_column, label_column, *keep_columns], source)
    if label_names is None:
        label_names = discover_labels(raw, label_column, source, min_distinct_labels)
    ids = {name: i for i, name in enumerate(label_names)}
    # A column slice reads the whole column at once; iterating a Column (or
    # handing one to from_dict) reads it row by row: 10x slower on 200k rows.
    texts = raw[text_column][:]
    labels = raw[label_column][:]
    label_ids: list[int] = []
    clean_texts: list[str] = []
    for row, (text, label) in enumerate(zip(texts, labels, strict=True), start=1):
        clean_texts.append(_check_text(text, row, source, text_column))
        label_ids.append(_check_label(label, row, source, label_column, ids))
    columns: dict[str, list[Any]] = {"text": clean_texts, "label": label_ids}
    for column in keep_columns:
        columns[column] = raw[column][:]
    import datasets

    return LabeledData(datasets.Dataset.from_dict(columns), list(label_names), source)


def _check_text(text: Any, row: int, source: str, column: str) -> str:
    if text is None or not str(text).strip():
        raise DataError(f"data file '{source}', row {row}: empty text in column '{column}'")
    return str(text)


def _check_label(
    label: Any, row: int, source: str, column: str, ids: dict[str, int]
) -> int:
    if label is None or label_to_name(label) == "":
        raise DataError(f"data file '{source}', row {row}: missing label in column '{column}'")
    name = label_to_name(label)
    if name not in ids:
        known = ", ".join(list(ids)[:10]) + (", ..." if len(ids) > 10 else "")
        raise DataError(
            f"data file '{source}', row {row}: label '{name}' is not one of the "
            f"federation's labels ({known})"
        )
    return ids[name]
