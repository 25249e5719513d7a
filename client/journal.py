"""What this node's ClientApp did, written for ``fedtext client`` to report.

A deployed node's ClientApp runs in a fresh ``flwr-clientapp`` process for
every message and Flower owns its output, so it cannot tell the organisation
running it what its data did. Instead, when the node config names a
``status-file`` (``fedtext client`` writes one into the node's home), each
handler appends one JSON line per event there:

============  ==============================================================
event         fields
============  ==============================================================
``train``     ``round``, ``rows``, ``steps``, ``loss``, ``seconds``, ``threads`` (torch's),
              ``epsilon`` (dp record: spent on this node's rows so far)
``sent``      ``bytes`` (the update's payload), ``masked`` (SecAgg+ or not)
``evaluate``  ``round``, ``rows``, ``accuracy``
``run-end``   ``status`` (the server's end-of-run notice)
============  ==============================================================

Every line also carries the ``run`` id. ``fedtext client`` reads the file as
it grows (:class:`JournalReader`), prints a line per round
(:class:`RoundReporter`) and exits on ``run-end``. Simulated nodes have no
status file: for them :func:`note` does nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import Context

STATUS_FILE = "status-file"  # node config key


def note(context: Context, event: str, **fields: Any) -> None:
    """Append one event to the node's status file, if it has one."""
    path = context.node_config.get(STATUS_FILE)
    if not path:
        return
    line = json.dumps({"event": event, "run": int(context.run_id), **fields})
    # One write of one line in append mode: the reader never sees half a line
    # followed by another process's line.
    with Path(str(path)).open("a", encoding="utf-8") as f:
        f.write(line + "\n")


class JournalReader:
    """The events appended to a status file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_events(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for its end
        events = []
        for raw in lines:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # not ours to judge: the node's own file, maybe edited
            if isinstance(event, dict) and "event" in event:
                events.append(event)
        return events


@dataclass
class RoundReporter:
    """Turns journal events into this client's lines, and keeps its totals."""

    runs: set[int] = field(default_factory=set)
    rounds: int = 0
    rows_trained: int = 0
    _trained: dict[str, Any] | None = None

    def line(self, event: dict[str, Any]) -> str | None:
        """The line to print for ``event``, or None (a ``train`` waits for its ``sent``)."""
        kind = event.get("event")
        self.runs.add(int(event.get("run", 0)))
        if kind == "train":
            self._trained = event
            return None
        if kind == "sent":
            trained, self._trained = self._trained or {}, None
            self.rounds += 1
            self.rows_trained += int(trained.get("rows", 0))
            how = "masked (SecAgg+)" if event.get("masked") else "in the clear (--no-secagg)"
            return (f"round {trained.get('round', '?')}: trained on {trained.get('rows', 0)} rows "
                    f"({trained.get('steps', 0)} steps), loss {float(trained.get('loss', 0.0)):.4f}, "
                    f"{float(trained.get('seconds', 0.0)):.1f} s; sent {_size(int(event.get('bytes', 0)))} {how}"
                    + (f"; record-level DP: epsilon {float(trained['epsilon']):.2f} spent on these rows"
                       if "epsilon" in trained else ""))
        if kind == "evaluate":
            return (f"round {event.get('round', '?')}: evaluated the global model on {event.get('rows', 0)} "
                    f"held-out rows: accuracy {float(event.get('accuracy', 0.0)):.4f}")
        if kind == "run-end":
            return f"run {event.get('run')} {event.get('status', 'ended')} on the server"
        return None

    def summary(self) -> str:
        runs = len(self.runs)
        return (f"took part in {runs} run{'s' * (runs != 1)}, {self.rounds} training "
                f"round{'s' * (self.rounds != 1)}, {self.rows_trained:,} rows trained")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
