"""Use a saved global model: evaluate it on a labeled file, or classify texts.

A model folder is what a run writes to ``OUT/model`` (``save_pretrained`` +
tokenizer + ``labels.json``): a transformers model, so nothing here needs
Flower or peft (a mean-pooling model brings its modeling file,
``common.pooled_model``, which importing this module registers). Labels in a file are mapped to ids **by name** through the
model's ``id2label``; a label the model does not know is an error naming the row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import common.pooled_model  # noqa: F401 - registers the mean-pooling classifier with the Auto classes
from common.config import FedTextConfig
from common.data import load_labeled
from common.errors import ConfigError, DataError


def check_model_folder(folder: str | Path) -> Path:
    """A folder ``from_pretrained`` can load, or a one-line error naming what is missing."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"--model '{path}': not a folder")
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model '{path}': no config.json (expected a saved model folder, e.g. OUT/model)")
    return path


def model_labels(folder: Path) -> list[str]:
    """Label names in id order, from the model's config."""
    config = json.loads((folder / "config.json").read_text())
    id2label = config.get("id2label") or {}
    if not id2label:
        raise ConfigError(f"--model '{folder}': config.json has no id2label")
    return [id2label[str(i)] for i in range(len(id2label))]


def evaluate_saved_model(
    folder: str | Path,
    data: str,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Accuracy, macro/per-class precision, recall, F1, confusion matrix and loss."""
    path = check_model_folder(folder)
    labels = model_labels(path)
    rows = load_labeled(data, text_column, label_column, labels, min_distinct_labels=1)
    metrics = evaluate_folder_on(path, rows.dataset, max_length, batch_size)
    metrics["data"] = str(data)
    return metrics


def evaluate_folder_on(
    folder: str | Path, dataset: Any, max_length: int = 128, batch_size: int = 32
) -> dict[str, Any]:
    """Metrics of a saved model on rows already loaded (``text``, ``label`` ids in the model's order)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from common.model import pick_device
    from common.training import evaluate_model

    path = check_model_folder(folder)
    labels = model_labels(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = FedTextConfig(max_length=max_length, batch_size=batch_size)
    metrics = evaluate_model(model, dataset, tokenizer, cfg, pick_device(), labels)
    metrics["labels"] = labels
    metrics["model"] = str(path)
    return metrics


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """Texts to classify: one per line of a .txt file, or a column of a table."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file '{p}': not found")
    if p.suffix.lower() == ".txt":
        try:
            texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as exc:
            raise DataError(f"data file '{p}': not UTF-8 text (byte offset {exc.start})") from exc
        texts = [t for t in texts if t]
    else:
        from common.data import read_table

        table = read_table(p)
        if text_column not in table.column_names:
            raise DataError(f"data file '{p}': no column '{text_column}' (columns: {', '.join(table.column_names)})")
        texts = [str(t) for t in table[text_column] if t is not None and str(t).strip()]
    if not texts:
        raise DataError(f"data file '{p}': no texts")
    return texts


def predict(folder: str | Path, texts: list[str], max_length: int = 128, batch_size: int = 32) -> list[dict[str, Any]]:
    """Label and score per text, through transformers' ``pipeline``."""
    from transformers import pipeline

    path = check_model_folder(folder)
    classify = pipeline("text-classification", model=str(path), tokenizer=str(path))
    results = classify(texts, batch_size=batch_size, truncation=True, max_length=max_length)
    return [
        {"text": text, "label": r["label"], "score": round(float(r["score"]), 6)}
        for text, r in zip(texts, results, strict=True)
    ]
