"""Classification metrics from one confusion matrix (numpy only).

Everything is derived from one confusion matrix. That is also how clients'
evaluations are combined: their confusion matrices are summed (each row counts
examples, so the sum weighs clients by their number of examples) and the
metrics recomputed, which gives exactly the metrics of the union of their data.

The Hugging Face ``evaluate`` metric built on these functions lives in
``common.evaluate_metric``: this module stays free of ``evaluate`` and
``datasets``, so that the commands that only format figures (the CLI
following a run) do not import them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(
    predictions: np.ndarray, references: np.ndarray, num_labels: int
) -> np.ndarray:
    """``cm[true, predicted]`` counts, shape ``(num_labels, num_labels)``."""
    predictions = np.asarray(predictions, dtype=np.int64)
    references = np.asarray(references, dtype=np.int64)
    flat = references * num_labels + predictions
    return np.bincount(flat, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # A class never predicted (or never present) scores 0, as scikit-learn's
    # zero_division=0 does, rather than NaN that would poison the macro mean.
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_confusion(cm: np.ndarray, label_names: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1, and the matrix itself."""
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    names = label_names or [str(i) for i in range(k)]
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": cm.tolist(),
        "num_examples": total,
    }


def summary(metrics: dict[str, Any], keys: tuple[str, ...] = ("accuracy", "f1_macro", "loss")) -> dict[str, float]:
    """The headline figures of a metrics dict (for logs and metrics.json)."""
    return {k: round(float(metrics[k]), 6) for k in keys if k in metrics}
