"""ClassificationMetrics against scikit-learn, and exact aggregation of confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion

from common.evaluate_metric import ClassificationMetrics
from common.metrics import confusion_matrix, metrics_from_confusion, summary

NAMES = ["a", "b", "c", "d"]


def _random(seed: int, n: int = 200, k: int = 4, never_predicted: int | None = 3):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, n)
    preds = rng.integers(0, k, n)
    if never_predicted is not None:
        preds[preds == never_predicted] = 0
    return preds, refs


def _check_against_sklearn(result: dict, preds: np.ndarray, refs: np.ndarray, k: int) -> None:
    labels = list(range(k))
    assert result["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    p, r, f, s = precision_recall_fscore_support(refs, preds, labels=labels, average=None, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(refs, preds, labels=labels, average="macro", zero_division=0)
    assert result["precision_macro"] == pytest.approx(mp)
    assert result["recall_macro"] == pytest.approx(mr)
    assert result["f1_macro"] == pytest.approx(mf)
    for i, name in enumerate(NAMES[:k]):
        per = result["per_class"][name]
        assert per["precision"] == pytest.approx(p[i])
        assert per["recall"] == pytest.approx(r[i])
        assert per["f1"] == pytest.approx(f[i])
        assert per["support"] == s[i]
    assert result["confusion_matrix"] == sk_confusion(refs, preds, labels=labels).tolist()
    assert result["num_examples"] == len(refs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_with_a_class_never_predicted(seed: int) -> None:
    preds, refs = _random(seed)
    assert 3 not in preds and 3 in refs
    result = ClassificationMetrics(NAMES).compute(predictions=preds, references=refs)
    assert result["per_class"]["d"]["precision"] == 0.0  # zero_division=0, not NaN
    _check_against_sklearn(result, preds, refs, 4)


def test_class_absent_from_references_and_predictions() -> None:
    preds, refs = _random(5, never_predicted=None)
    refs[refs == 2] = 1
    preds[preds == 2] = 0
    result = ClassificationMetrics(NAMES).compute(predictions=preds, references=refs)
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    _check_against_sklearn(result, preds, refs, 4)


def test_add_batch_accumulates_like_one_compute() -> None:
    preds, refs = _random(7, n=301)
    metric = ClassificationMetrics(NAMES)
    for start in range(0, 301, 37):
        metric.add_batch(predictions=preds[start:start + 37], references=refs[start:start + 37])
    batched = metric.compute()
    assert batched == ClassificationMetrics(NAMES).compute(predictions=preds, references=refs)
    # A batch that lacks a class still yields a full-size matrix.
    small = ClassificationMetrics(NAMES).compute(predictions=[0, 0], references=[0, 1])
    assert np.asarray(small["confusion_matrix"]).shape == (4, 4)


def test_metric_instances_are_independent() -> None:
    a, b = ClassificationMetrics(NAMES), ClassificationMetrics(NAMES)
    a.add_batch(predictions=[0, 1], references=[0, 1])
    b.add_batch(predictions=[1, 1, 1], references=[0, 0, 0])
    assert a.compute()["accuracy"] == 1.0
    assert b.compute()["accuracy"] == 0.0


def test_summed_client_confusions_give_the_metrics_of_the_union() -> None:
    rng = np.random.default_rng(11)
    sizes = [5, 40, 133]  # unequal clients: the sum weighs them by examples
    clients = [_random(int(rng.integers(1_000)), n=n) for n in sizes]
    summed = sum(confusion_matrix(p, r, 4) for p, r in clients)
    union_preds = np.concatenate([p for p, _ in clients])
    union_refs = np.concatenate([r for _, r in clients])
    aggregated = metrics_from_confusion(summed, NAMES)
    union = ClassificationMetrics(NAMES).compute(predictions=union_preds, references=union_refs)
    assert aggregated == union
    _check_against_sklearn(aggregated, union_preds, union_refs, 4)
    # Averaging clients' accuracies unweighted would not give it (the property is not trivial).
    naive = np.mean([accuracy_score(r, p) for p, r in clients])
    assert naive != pytest.approx(aggregated["accuracy"])


def test_empty_confusion_is_all_zero() -> None:
    result = metrics_from_confusion(np.zeros((2, 2), dtype=np.int64))
    assert result["accuracy"] == 0.0 and result["num_examples"] == 0
    assert list(result["per_class"]) == ["0", "1"]


def test_summary_picks_headline_figures() -> None:
    assert summary({"accuracy": 0.5, "f1_macro": 1 / 3, "other": 1}) == {"accuracy": 0.5, "f1_macro": 0.333333}


def test_round_plots_tick_whole_rounds_only(tmp_path) -> None:  # noqa: ANN001
    from common.plots import plot_rounds, pyplot, rounds_figure

    doc = {"rounds": [{"round": r, "central": {"accuracy": 0.5 + r / 10, "f1_macro": 0.5, "loss": 1.0 - r / 10},
                       "clients": {"evaluate": {"accuracy": 0.6}}} for r in range(3)]}
    fig = rounds_figure(doc)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    pyplot().close(fig)
    assert plot_rounds(doc, tmp_path / "rounds.png").stat().st_size > 0


def test_the_round_plot_is_redrawn_at_most_every_refresh_and_always_at_the_end(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import time
    from types import SimpleNamespace

    import server.outputs as outputs

    clock = [1000.0]  # the module's own clock, not the time module everyone shares
    monkeypatch.setattr(outputs, "time", SimpleNamespace(monotonic=lambda: clock[0], strftime=time.strftime))
    drawn: list[int] = []
    monkeypatch.setattr(outputs, "plot_rounds", lambda doc, path: drawn.append(len(doc["rounds"])))
    recorder = outputs.RunRecorder(tmp_path, {"rounds": 3}, {})
    central = {"accuracy": 0.5, "f1_macro": 0.5, "loss": 1.0}
    recorder.record_round(0, central, {})  # the first round is drawn at once
    clock[0] += 5
    recorder.record_round(1, central, {})  # 5 s later: metrics.json only
    clock[0] += outputs.PLOT_REFRESH_S
    recorder.record_round(2, central, {})
    recorder.finish("completed")  # the final figure holds every round
    assert drawn == [1, 3, 3]
    assert len(outputs.json.loads((tmp_path / "metrics.json").read_text())["rounds"]) == 3
