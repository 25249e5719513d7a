"""common/processes.py: log copies without colour codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.processes import copy_without_colour


def test_logs_are_copied_into_a_file_without_colour_codes(tmp_path: Path) -> None:
    code = "print('\\x1b[92mINFO \\x1b[0m:      hello'); print('plain line')"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None
    copy_without_colour(process.stdout, tmp_path / "run.log").join(timeout=30)
    assert (tmp_path / "run.log").read_text() == "INFO :      hello\nplain line\n"
