"""load_labeled: every supported format gives the same rows; every bad file one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data import load_labeled, read_table
from common.errors import DataError
from tests.conftest import write_csv, write_jsonl, write_parquet

FORMATS = ["csv", "tsv", "jsonl", "parquet", "saved"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_the_same_rows(
    fmt: str, data_files: dict[str, Path], sample_rows: list[dict[str, str]]
) -> None:
    data = load_labeled(data_files[fmt])
    assert data.label_names == ["fresh", "rotten"]
    assert len(data) == len(sample_rows)
    assert data.dataset["text"] == [r["text"] for r in sample_rows]
    assert data.dataset["label"] == [data.label_names.index(r["label"]) for r in sample_rows]
    assert data.source == str(data_files[fmt])


def test_packaged_source(tmp_path: Path) -> None:
    data = load_labeled("packaged:rotten_tomatoes", keep_columns=("movie_name",))
    assert data.label_names == ["fresh", "rotten"]
    assert len(data) == 12808
    assert set(data.dataset.column_names) == {"text", "label", "movie_name"}
    with pytest.raises(DataError, match="packaged data 'imdb'"):
        read_table("packaged:imdb")


def test_compressed_csv(tmp_path: Path, sample_rows: list[dict[str, str]]) -> None:
    import pandas as pd

    path = tmp_path / "rows.csv.gz"
    pd.DataFrame(sample_rows).to_csv(path, index=False)
    assert load_labeled(path).dataset["text"] == [r["text"] for r in sample_rows]


def test_int_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate([10, 2, 0, 2, 10])]
    data = load_labeled(write_csv(tmp_path / "ints.csv", rows))
    assert data.label_names == ["0", "2", "10"]
    assert data.dataset["label"] == [2, 1, 0, 1, 2]
    # The same labels from JSON lines (ints there too) and as declared names.
    data = load_labeled(write_jsonl(tmp_path / "ints.jsonl", rows), label_names=["10", "2", "0"])
    assert data.dataset["label"] == [0, 1, 2, 1, 0]


def test_int_labels_with_a_gap_become_floats_but_keep_their_names(tmp_path: Path) -> None:
    # pandas/arrow read an int column with an empty cell as float (1.0): names stay "1".
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": None}]
    with pytest.raises(DataError) as info:
        load_labeled(write_parquet(tmp_path / "gap.parquet", rows), label_names=["0", "1"])
    _one_line(info.value, "gap.parquet", "row 3", "'label'")


def test_string_labels_in_declared_order(tmp_path: Path, data_files: dict[str, Path],
                                         sample_rows: list[dict[str, str]]) -> None:
    data = load_labeled(data_files["csv"], label_names=["rotten", "fresh"])
    assert data.label_names == ["rotten", "fresh"]
    assert data.dataset["label"] == [0 if r["label"] == "rotten" else 1 for r in sample_rows]
    # A declared label that the file never uses is fine (a client may lack a class).
    data = load_labeled(data_files["csv"], label_names=["rotten", "fresh", "spoiled"])
    assert set(data.dataset["label"]) == {0, 1}


def test_labels_are_stripped(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": " fresh"}, {"text": "b", "label": "rotten "}]
    data = load_labeled(write_csv(tmp_path / "spaces.csv", rows))
    assert data.label_names == ["fresh", "rotten"]


def test_custom_columns_and_kept_columns(tmp_path: Path) -> None:
    rows = [{"review": "good", "y": "pos", "movie": "m1"}, {"review": "bad", "y": "neg", "movie": "m2"}]
    path = write_csv(tmp_path / "custom.csv", rows)
    data = load_labeled(path, text_column="review", label_column="y", keep_columns=("movie",))
    assert data.dataset.to_list() == [
        {"text": "good", "label": 1, "movie": "m1"},
        {"text": "bad", "label": 0, "movie": "m2"},
    ]


def _one_line(exc: BaseException, *parts: str) -> None:
    message = str(exc)
    assert "\n" not in message.strip(), message
    for part in parts:
        assert part in message, (part, message)


def _rows_with(index: int, **change: object) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {"text": f"review number {i}", "label": "fresh" if i % 2 else "rotten"} for i in range(8)
    ]
    rows[index] = {**rows[index], **change}
    return rows


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_labeled(tmp_path / "nope.csv")
    _one_line(info.value, "nope.csv", "not found")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_labeled(tmp_path / "empty.csv")
    _one_line(info.value, "empty.csv", "empty")


def test_header_only_file(tmp_path: Path) -> None:
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError) as info:
        load_labeled(tmp_path / "header.csv")
    _one_line(info.value, "header.csv", "no rows")


def test_zero_row_parquet(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(
        tmp_path / "none.parquet")
    with pytest.raises(DataError) as info:
        load_labeled(tmp_path / "none.parquet")
    # datasets' parquet reader fails on 0 rows (arrow "BatchSize must be greater
    # than 0") before fedtext's own "no rows" check: one line naming the file.
    _one_line(info.value, "none.parquet")


@pytest.mark.parametrize("missing", ["text", "label"])
def test_missing_column(tmp_path: Path, missing: str) -> None:
    rows = [{k: v for k, v in r.items() if k != missing} for r in _rows_with(0)]
    path = write_jsonl(tmp_path / "cols.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_labeled(path)
    _one_line(info.value, "cols.jsonl", f"no column '{missing}'")


def test_missing_custom_text_column(data_files: dict[str, Path]) -> None:
    with pytest.raises(DataError) as info:
        load_labeled(data_files["csv"], text_column="review")
    _one_line(info.value, "rows.csv", "no column 'review'", "columns: text, label")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_text_names_the_row(tmp_path: Path, fmt: str, empty: str) -> None:
    rows = _rows_with(4, text=empty)  # 5th data row
    path = (write_csv if fmt == "csv" else write_jsonl)(tmp_path / f"t.{fmt}", rows)
    with pytest.raises(DataError) as info:
        load_labeled(path)
    _one_line(info.value, f"t.{fmt}", "row 5", "empty text", "'text'")


def test_unknown_label_names_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "u.csv", _rows_with(6, label="meh"))
    with pytest.raises(DataError) as info:
        load_labeled(path, label_names=["fresh", "rotten"])
    _one_line(info.value, "u.csv", "row 7", "'meh'", "fresh, rotten")


def test_missing_label_names_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", _rows_with(2, label=None))
    with pytest.raises(DataError) as info:
        load_labeled(path)  # labels discovered from the other rows
    _one_line(info.value, "m.csv", "row 3", "missing label", "'label'")
    path = write_jsonl(tmp_path / "m.jsonl", _rows_with(3, label=""))
    with pytest.raises(DataError) as info:
        load_labeled(path, label_names=["fresh", "rotten"])
    _one_line(info.value, "m.jsonl", "row 4", "missing label")


def test_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood film,fresh\ncaf\u00e9 noir,rotten\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_labeled(path)
    _one_line(info.value, "latin.csv", "not UTF-8", "0xe9")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "rows.xlsx"
    path.write_text("text,label\na,b\n")
    with pytest.raises(DataError) as info:
        load_labeled(path)
    _one_line(info.value, "rows.xlsx", "unknown format")


def test_folder_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "just_a_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        load_labeled(folder)
    _one_line(info.value, "just_a_folder", "not a saved datasets folder")


def test_saved_dataset_dict_needs_train_or_one_split(tmp_path: Path, sample_rows: list[dict[str, str]]) -> None:
    import datasets

    ds = datasets.Dataset.from_list(sample_rows)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_labeled(tmp_path / "dd")) == len(sample_rows)
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(DataError) as info:
        load_labeled(tmp_path / "ab")
    _one_line(info.value, "ab", "'a', 'b'")


def test_only_one_distinct_label(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "fresh"} for i in range(5)]
    path = write_csv(tmp_path / "one.csv", rows)
    with pytest.raises(DataError) as info:
        load_labeled(path)
    _one_line(info.value, "one.csv", "1 distinct label", "at least 2")
    # With the federation's labels declared, a one-class client file is valid.
    assert load_labeled(path, label_names=["fresh", "rotten"]).dataset["label"] == [0] * 5


@pytest.mark.parametrize("separate_test_file", [False, True])
def test_one_read_gives_the_rows_of_the_separate_calls(
    tmp_path: Path, tiny_config, sample_rows: list[dict[str, str]], separate_test_file: bool
) -> None:
    from common.splits import server_test_set, server_test_set_and_pool, training_pool

    data = write_csv(tmp_path / "data.csv", sample_rows)
    test_file = write_csv(tmp_path / "test.csv", sample_rows[:7]) if separate_test_file else ""
    cfg = tiny_config(data=str(data), test_data=str(test_file), max_examples=9, max_test_examples=5)
    test, pool = server_test_set_and_pool(cfg)
    alone_test = server_test_set(cfg)
    alone_pool = training_pool(cfg, alone_test.label_names)
    assert test.label_names == alone_test.label_names == pool.label_names
    assert test.dataset.to_list() == alone_test.dataset.to_list()
    assert pool.dataset.to_list() == alone_pool.dataset.to_list() and len(pool) == 9
