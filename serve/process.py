"""A ``fedtext serve`` child process on a free local port (for the benchmark and the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.processes import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]


class ServeProcess:
    """``fedtext serve --model MODEL FLAGS...`` on 127.0.0.1, started and waited for.

    Parameters
    ----------
    model : Path
        Model folder to serve; its parent receives the server's log.
    flags : str
        More ``fedtext serve`` flags.
    """

    def __init__(self, model: Path, *flags: str, timeout: float = 120.0) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = model.parent / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", "serve", "--model", str(model), "--port", str(self.port),
             *flags], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fedtext serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"fedtext serve did not come up in {timeout:.0f}s: {self.log.read_text()[-2000:]}")

    def post(self, body: object | bytes, timeout: float = 60):  # noqa: ANN201 - httpx.Response
        import httpx

        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.url}/predict", content=content, timeout=timeout,
                          headers={"content-type": "application/json"})

    def metric(self, name: str) -> float:
        """Sum of the Prometheus samples whose line starts with ``name``."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> None:
        stop_process_group(self.process, grace=10)
