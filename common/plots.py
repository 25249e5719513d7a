"""PNG figures of a run: per-round curves and confusion matrices (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: list[list[int]] | np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix, true labels down, predictions across, counts in the cells."""
    plt = pyplot()
    cm = np.asarray(cm)
    size = max(4.0, 0.9 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > threshold else "black")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_rounds(doc: dict[str, Any], path: str | Path) -> Path:
    """Central accuracy, macro F1 and loss per round, with the clients' evaluation means."""
    fig = rounds_figure(doc)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return Path(path)


def rounds_figure(doc: dict[str, Any]) -> Any:
    """The figure of :func:`plot_rounds` (a matplotlib Figure), not yet saved."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    rounds = doc.get("rounds", [])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("accuracy", "f1_macro", "loss"), ("accuracy", "macro F1", "loss"), strict=True):
        central = [(r["round"], (r.get("central") or {}).get(key)) for r in rounds]
        central = [(a, b) for a, b in central if b is not None]
        if central:
            ax.plot(*zip(*central, strict=True), marker="o", label="central (server test set)")
        client = [(r["round"], r.get("clients", {}).get("evaluate", {}).get(key)) for r in rounds]
        client = [(a, b) for a, b in client if b is not None]
        if client:
            ax.plot(*zip(*client, strict=True), marker="s", linestyle="--", label="clients (held-out rows)")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # there is no round 1.5
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
