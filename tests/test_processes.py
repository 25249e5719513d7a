"""common/processes.py: a call in a fresh interpreter awaited later, and log copies without colour codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.processes import FreshCall, copy_without_colour


def test_a_fresh_call_runs_in_its_own_process_and_is_awaited_later() -> None:
    call = FreshCall(os.getpid)
    assert call.result() not in (os.getpid(), None)


def test_a_fresh_call_raises_its_exception_here() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        FreshCall(int, "not a number").result()


def test_a_cancelled_fresh_call_leaves_no_process() -> None:
    call = FreshCall(time.sleep, 60)
    call.cancel()
    assert call.process.poll() is not None


def test_logs_are_copied_into_a_file_without_colour_codes(tmp_path: Path) -> None:
    code = "print('\\x1b[92mINFO \\x1b[0m:      hello'); print('plain line')"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None
    copy_without_colour(process.stdout, tmp_path / "run.log").join(timeout=30)
    assert (tmp_path / "run.log").read_text() == "INFO :      hello\nplain line\n"
