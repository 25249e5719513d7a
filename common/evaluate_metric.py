"""Classification metrics through Hugging Face ``evaluate``, offline.

``evaluate.load("accuracy")`` fetches the metric's script from the hub, which
this project cannot reach; :class:`ClassificationMetrics` is an
``evaluate.Metric`` defined here instead, so it accumulates batches with
``add_batch`` and computes with ``compute`` like any hub metric. The figures
come from one confusion matrix (``common.metrics``).
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

from common.metrics import confusion_matrix, metrics_from_confusion


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
