"""Classification metrics through Hugging Face ``evaluate``, offline.

``evaluate.load("accuracy")`` fetches the metric's script from the hub, which
this project cannot reach; :class:`ClassificationMetrics` is an
``evaluate.Metric`` defined here instead, so it accumulates batches with
``add_batch`` and computes with ``compute`` like any hub metric.

Everything is derived from one confusion matrix. That is also how clients'
evaluations are combined: their confusion matrices are summed (each row counts
examples, so the sum weighs clients by their number of examples) and the
metrics recomputed, which gives exactly the metrics of the union of their data.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
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


class ClassificationMetrics(evaluate.Metric):
    """Accuracy, precision/recall/F1 (macro and per class), confusion matrix.

    Parameters
    ----------
    label_names : list[str]
        Label names in id order (fixes the number of classes, so that a batch
        missing a class still yields a full-size matrix).
    """

    def __init__(self, label_names: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("keep_in_memory", True)  # no cache files per instance
        super().__init__(**kwargs)
        self.label_names = list(label_names)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Multi-class classification report from one confusion matrix.",
            citation="",
            inputs_description="predictions and references: int label ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, Any]:
        cm = confusion_matrix(np.asarray(predictions), np.asarray(references), len(self.label_names))
        return metrics_from_confusion(cm, self.label_names)


def summary(metrics: dict[str, Any], keys: tuple[str, ...] = ("accuracy", "f1_macro", "loss")) -> dict[str, float]:
    """The headline figures of a metrics dict (for logs and metrics.json)."""
    return {k: round(float(metrics[k]), 6) for k in keys if k in metrics}
