"""The SecAgg+ benchmark runs end to end on tiny sizes and reports fedtext's 4 B/param upload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROW_KEYS = {
    "impl", "m", "n", "degree", "threshold", "dropouts", "verified",
    "bytes_per_param", "stage2_reply_bytes", "round_upload_bytes_per_param", "upload_bytes_by_stage",
    "client_stage2_s", "client_ms_per_1M", "server_sum_s", "server_unmask_s",
    "load_avg_before", "load_avg_after", "case_wall_s",
}
FEDTEXT_KEYS = {"round_secagg_s", "round_plain_s", "round_overhead_x", "round_method"}


def test_bench_secagg_tiny(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.bench_secagg", "--out", str(out),
         "--sizes", "20000", "--clients", "3", "5", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "B/param" in proc.stdout and "load average" in proc.stdout

    report = json.loads(out.read_text())
    assert {"command", "machine", "settings", "load_avg_start", "load_avg_end", "wall_s"} <= set(report)
    rows = report["results"]
    assert sorted((r["n"], r["impl"]) for r in rows) == [
        (3, "fedtext"), (3, "flower"), (5, "fedtext"), (5, "flower")
    ]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["m"] == 20000
        assert row["verified"] is True  # both unmasked sums match the clients' mean
        assert row["client_stage2_s"] > 0 and row["server_unmask_s"] > 0
        assert set(row["upload_bytes_by_stage"]) == {"0", "1", "2", "3"}
        if row["impl"] == "fedtext":
            assert FEDTEXT_KEYS <= set(row)
            # uint32 masked vector + the stage's ConfigRecord and message headers
            assert 4.0 < row["bytes_per_param"] < 4.1
        else:
            assert row["bytes_per_param"] >= 8.0  # int64 masked vector
    assert [r["dropouts"] for r in rows if r["n"] == 5] == [1, 1]
