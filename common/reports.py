"""Benchmark reports: figures as JSON, and a generated part of a markdown document.

Each benchmark script owns one part of a document (docs/BENCHMARKS.md,
docs/TUNING.md, ...) between two HTML comments; a rerun replaces that part and
leaves the hand-written rest of the document as it was.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any


def markers(name: str, command: str) -> tuple[str, str]:
    """The begin and end comments of the part ``command`` writes."""
    return f"<!-- {name}:begin (written by {command}; edits here are lost) -->", f"<!-- {name}:end -->"


def command_line(module: str, argv: list[str] | None) -> str:
    """How the report names the run: ``python -m MODULE ARGS`` (``sys.argv`` when ``argv`` is None), shell-quoted."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def write_figures(docs: Path, name: str, figures: Any) -> Path:
    """``docs/benchmarks/<name>.json``."""
    path = docs / "benchmarks" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1) + "\n")
    return path


def read_figures(docs: Path, name: str) -> Any:
    """``docs/benchmarks/<name>.json``, as :func:`write_figures` wrote it."""
    return json.loads((docs / "benchmarks" / f"{name}.json").read_text())


def add_report_arguments(parser: Any, name: str) -> None:
    """``--docs`` and ``--report`` (rewrite the docs' part from the figures, without running)."""
    parser.add_argument("--docs", default="docs", help="Folder of BENCHMARKS.md and benchmarks/.")
    parser.add_argument("--report", action="store_true",
                        help=f"Only rewrite the docs' part from docs/benchmarks/{name}.json.")


def replace_part(path: Path, begin: str, end: str, body: str, heading: str) -> Path:
    """Put ``body`` between ``begin`` and ``end`` in ``path``.

    A missing document starts with ``heading``; missing markers are appended,
    under ``heading`` when the document does not have it yet.
    """
    text = path.read_text() if path.exists() else f"{heading}\n"
    if begin not in text or end not in text:
        text += ("" if heading in text else f"\n{heading}\n") + f"\n{begin}\n{end}\n"
    before, rest = text.split(begin, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{begin}\n\n{body}\n{end}{after}")
    return path


def read_jobs(path: str | Path) -> list[list[str]]:
    """A benchmark's jobs file: one job's ``KEY=VALUE`` arguments per line; ``#`` starts a comment line."""
    lines = Path(path).read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


def mean_phases(phases: list[dict[str, float]], digits: int) -> dict[str, float]:
    """Mean seconds per phase over rounds (each round's ``phases_s``), in the rounds' order of phases."""
    import statistics

    names = list(dict.fromkeys(n for p in phases for n in p))
    return {n: round(statistics.mean(p.get(n, 0.0) for p in phases), digits) for n in names}
