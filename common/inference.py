"""Use a saved global model: classify texts, evaluate on a labeled file, serve.

A model folder is either

- what a run writes to ``OUT/model``: ``save_pretrained`` + tokenizer +
  ``labels.json`` + ``fedtext.json`` (the run it came from, its max length).
  A mean-pooling model brings its modeling file (``common.pooled_model``),
  which this module registers with the Auto classes; or
- what ``fedtext export`` writes: ``model.onnx`` (or ``model.int8.onnx``) next
  to the same tokenizer and config files, run with ONNX Runtime.

:func:`load_classifier` opens either as a :class:`Classifier`: texts in,
logits out, the same for ``predict``, ``evaluate`` and ``serve``. Labels in a
file are mapped to ids **by name** through the model's ``id2label``; a label
the model does not know is an error naming the row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.data import load_labeled
from common.errors import ConfigError, DataError

ONNX_FILES = ("model.int8.onnx", "model.onnx")  # an exported folder's graph, quantized first
DEFAULT_MAX_LENGTH = 128


def check_model_folder(folder: str | Path) -> Path:
    """A folder a :class:`Classifier` can load, or a one-line error naming what is missing."""
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


def model_card(folder: Path) -> dict[str, Any]:
    """``fedtext.json`` of a saved model (the run it came from), or ``{}``."""
    try:
        return json.loads((folder / "fedtext.json").read_text())
    except (OSError, ValueError):
        return {}


class Classifier:
    """Texts in, logits out, for a saved model folder (see :func:`load_classifier`).

    Attributes
    ----------
    folder : Path
        The model folder.
    labels : list[str]
        Label names in id order.
    max_length : int
        Tokens per text the model reads (longer texts are truncated or refused).
    backend : str
        ``pytorch``, ``onnxruntime`` or ``onnxruntime-int8``.
    """

    backend = "?"

    def __init__(self, folder: Path, max_length: int | None) -> None:
        from transformers import AutoTokenizer

        import common.pooled_model  # noqa: F401 - its config class, for folders that name it

        self.folder = folder
        self.labels = model_labels(folder)
        self.card = model_card(folder)
        self.max_length = int(max_length or self.card.get("max_length") or DEFAULT_MAX_LENGTH)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, untruncated (callers decide what too long means)."""
        return self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]

    def truncate(self, ids: list[int]) -> list[int]:
        """Keep the first ``max_length`` tokens, and the closing special token if there is one."""
        if len(ids) <= self.max_length:
            return ids
        closing = ids[-1] if ids[-1] in self.tokenizer.all_special_ids else None
        return ids[: self.max_length - 1] + [closing] if closing is not None else ids[: self.max_length]

    def pad(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, attention mask) of a batch, right-padded to its longest text."""
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        ids = np.full((len(batch), width), pad, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def logits_of_ids(self, batch: list[list[int]]) -> np.ndarray:
        """Logits (rows x labels, float32) of already tokenized, truncated texts."""
        raise NotImplementedError

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Logits of texts, truncated to ``max_length``, in batches of similar lengths."""
        encoded = [self.truncate(ids) for ids in self.encode(texts)]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")  # less padding per batch
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.logits_of_ids([encoded[i] for i in idx])
        return out

    def describe(self) -> dict[str, Any]:
        """What ``/info`` and logs say about the model."""
        return {"model": str(self.folder), "backend": self.backend, "labels": self.labels,
                "max_length": self.max_length, "run": self.card.get("run", "")}


class TorchClassifier(Classifier):
    """A ``save_pretrained`` folder run with PyTorch (CUDA when present)."""

    backend = "pytorch"

    def __init__(self, folder: Path, max_length: int | None = None) -> None:
        super().__init__(folder, max_length)
        import torch
        from transformers import AutoModelForSequenceClassification

        from common.model import pick_device

        self.device = pick_device()
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(self.device).eval()
        self._torch = torch

    def logits_of_ids(self, batch: list[list[int]]) -> np.ndarray:
        ids, mask = self.pad(batch)
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(ids).to(self.device),
                             attention_mask=torch.from_numpy(mask).to(self.device)).logits
        return out.float().cpu().numpy()


class OnnxClassifier(Classifier):
    """An exported folder run with ONNX Runtime (``model.int8.onnx`` when present, else ``model.onnx``)."""

    def __init__(self, folder: Path, max_length: int | None = None, graph: str | None = None) -> None:
        super().__init__(folder, max_length)
        import onnxruntime as ort

        name = graph or next(n for n in ONNX_FILES if (folder / n).exists())
        self.backend = "onnxruntime-int8" if "int8" in name else "onnxruntime"
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])

    def logits_of_ids(self, batch: list[list[int]]) -> np.ndarray:
        ids, mask = self.pad(batch)
        return self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0].astype(np.float32)


def load_classifier(folder: str | Path, max_length: int | None = None) -> Classifier:
    """The folder's model: ONNX Runtime for an exported folder, PyTorch otherwise."""
    path = check_model_folder(folder)
    if any((path / name).exists() for name in ONNX_FILES):
        return OnnxClassifier(path, max_length)
    return TorchClassifier(path, max_length)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


# --- evaluate and predict ------------------------------------------------------------------


def evaluate_classifier(classifier: Classifier, dataset: Any, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy, macro/per-class precision, recall, F1, confusion matrix and loss on loaded rows."""
    from common.metrics import metrics_from_confusion

    labels = np.asarray(dataset["label"], dtype=np.int64)
    logits = classifier.logits(list(dataset["text"]), batch_size)
    k = len(classifier.labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, logits.argmax(axis=-1)), 1)
    metrics = metrics_from_confusion(confusion, classifier.labels)
    probs = softmax(logits.astype(np.float64))
    metrics["loss"] = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
    metrics["labels"] = classifier.labels
    metrics["model"] = str(classifier.folder)
    metrics["backend"] = classifier.backend
    return metrics


def evaluate_saved_model(
    folder: str | Path,
    data: str,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """:func:`evaluate_classifier` on a labeled file."""
    classifier = load_classifier(folder, max_length)
    rows = load_labeled(data, text_column, label_column, classifier.labels, min_distinct_labels=1)
    metrics = evaluate_classifier(classifier, rows.dataset, batch_size)
    metrics["data"] = str(data)
    return metrics


def evaluate_folder_on(folder: str | Path, dataset: Any, max_length: int | None = None,
                       batch_size: int = 32) -> dict[str, Any]:
    """:func:`evaluate_classifier` on rows already loaded (``text``, ``label`` ids in the model's order)."""
    return evaluate_classifier(load_classifier(folder, max_length), dataset, batch_size)


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


def predict(folder: str | Path, texts: list[str], max_length: int | None = None,
            batch_size: int = 32) -> list[dict[str, Any]]:
    """Label and score (softmax probability) per text."""
    classifier = load_classifier(folder, max_length)
    probs = softmax(classifier.logits(texts, batch_size).astype(np.float64))
    return [
        {"text": text, "label": classifier.labels[int(p.argmax())], "score": round(float(p.max()), 6)}
        for text, p in zip(texts, probs, strict=True)
    ]
