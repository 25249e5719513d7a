"""The run folder: ``metrics.json`` after every round, ``rounds.png`` at most every
30 s and at the end, progress lines, and at the end ``confusion.png`` (the model
itself: ``server.global_model``)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from common.metrics import summary
from common.plots import plot_confusion, plot_rounds

log = logging.getLogger("fedtext.server")

# Drawing rounds.png takes about 0.4 s on 2 cores: after every round of a short
# run that is more than the rounds (a 10-round test federation spent 7 s
# drawing). A user watching a long run sees it at most this far behind.
PLOT_REFRESH_S = 30.0


class RunRecorder:
    """Appends one entry per round to ``OUT/metrics.json`` (rewritten atomically).

    Parameters
    ----------
    out : str or Path
        The run folder.
    config : dict
        The run's validated config, stored alongside the rounds.
    extra : dict
        Anything else worth keeping with the figures (labels, model sizes).
    plot_every_round : bool
        Redraw ``rounds.png`` as rounds end, at most every ``PLOT_REFRESH_S``
        seconds (a user watching a long run); tuning trials draw it once, at
        the end.
    """

    def __init__(self, out: str | Path, config: dict[str, Any], extra: dict[str, Any],
                 plot_every_round: bool = True) -> None:
        self.plot_every_round = plot_every_round
        self._drawn_at = -PLOT_REFRESH_S
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.json"
        self.doc: dict[str, Any] = {"rounds": [], "config": config, **extra, "status": "running"}
        self._write()

    def record_round(
        self,
        server_round: int,
        central: dict[str, Any],
        clients: dict[str, Any],
        bytes_up: int = 0,
        bytes_down: int = 0,
        seconds: float = 0.0,
        **extra: Any,
    ) -> None:
        """Store one round's figures and print its progress line."""
        entry = {
            "round": server_round,
            "central": {**summary(central, ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"))},
            "clients": clients,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "seconds": round(seconds, 3),
            **extra,
        }
        self.doc["rounds"].append(entry)
        self.doc["final_central"] = central
        self._write()
        if self.plot_every_round and time.monotonic() - self._drawn_at >= PLOT_REFRESH_S:
            plot_rounds(self.doc, self.out / "rounds.png")
            self._drawn_at = time.monotonic()
        log.info("%s", progress_line(entry, self.doc["config"].get("rounds")))

    def restore(self, previous: dict[str, Any], **extra: Any) -> None:
        """Continue a resumed run's document: its rounds so far and last central metrics."""
        self.doc["rounds"] = list(previous.get("rounds", []))
        if "final_central" in previous:
            self.doc["final_central"] = previous["final_central"]
        self.doc.update(extra)
        self._write()

    def finish(self, status: str, **extra: Any) -> None:
        """Mark the run finished (``completed`` or ``failed: reason``); draw its plots."""
        self.doc["status"] = status
        self.doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.doc.update(extra)
        self._write()
        plot_rounds(self.doc, self.out / "rounds.png")
        final = self.doc.get("final_central", {})
        if "confusion_matrix" in final:
            plot_confusion(final["confusion_matrix"], self.doc.get("labels", []), self.out / "confusion.png",
                           "global model on the server's test set")

    @staticmethod
    def mark_told(out: str | Path, clients: int) -> None:
        """Record that the end-of-run notice went out: nothing is left for the run to do.

        ``fedtext simulate`` and ``fedtext server`` stop waiting here instead of
        for Flower's own end of the run (the simulation engine shutting Ray
        down, seconds later).
        """
        path = Path(out) / "metrics.json"
        if not path.exists():
            return
        doc = json.loads(path.read_text())
        doc["clients_told"] = clients
        path.write_text(json.dumps(doc, indent=1) + "\n")

    @staticmethod
    def mark_failed(out: str | Path, reason: str) -> None:
        """Record a failure in an existing ``metrics.json`` (or a new one)."""
        path = Path(out) / "metrics.json"
        doc = json.loads(path.read_text()) if path.exists() else {"rounds": []}
        doc["status"] = f"failed: {reason}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
        os.replace(tmp, self.path)


def progress_line(entry: dict[str, Any], rounds: int | None) -> str:
    """``round 2/3 | central acc 0.7312 f1 0.7190 loss 0.5521 | 3 clients | up 1.8 MB | 41.2 s``.

    With the clients' held-out rows evaluated, their figures follow (``held-out acc ...``).
    """
    c = entry.get("central") or {}
    clients = entry.get("clients", {})
    parts = [f"round {entry['round']}/{rounds}" if rounds else f"round {entry['round']}"]
    if c:
        parts.append(f"central acc {c.get('accuracy', float('nan')):.4f} f1 {c.get('f1_macro', float('nan')):.4f} "
                     f"loss {c.get('loss', float('nan')):.4f}")
    held_out = clients.get("evaluate")
    if held_out:
        parts.append(f"held-out acc {held_out.get('accuracy', float('nan')):.4f} "
                     f"f1 {held_out.get('f1_macro', float('nan')):.4f} ({held_out.get('num_examples', 0)} rows)")
    if "trained" in clients:  # a federated round (centralized rounds move no bytes)
        parts.append(f"{clients['trained']} clients")
        parts.append(f"up {entry['bytes_up'] / 1e6:.2f} MB down {entry['bytes_down'] / 1e6:.2f} MB")
    privacy = entry.get("privacy")
    if privacy:
        parts.append(f"eps {privacy['epsilon']:.2f} of {privacy['target_epsilon']:g} (delta {privacy['delta']:g})")
    if entry["round"] > 0:
        parts.append(f"{entry['seconds']:.1f} s")
    return " | ".join(parts)


def final_figures(doc: dict[str, Any]) -> str:
    """The last round's headline: central accuracy and macro F1, else the held-out rows'."""
    last = doc["rounds"][-1] if doc.get("rounds") else {}
    for what, figures in (("central", last.get("central")),
                          ("held-out", last.get("clients", {}).get("evaluate"))):
        if figures:
            return f"{what} accuracy {figures['accuracy']:.4f}, macro F1 {figures['f1_macro']:.4f}"
    return "no evaluation recorded"
