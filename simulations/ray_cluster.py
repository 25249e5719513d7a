"""Local Ray nodes that outlive single simulations, and the check of a cluster's address.

Flower's simulation engine starts its own Ray for every run unless
``RAY_ADDRESS`` names a running cluster, in which case it connects to it
(``ray.init`` reads the variable). A tuning study runs many simulations in a
row: one head for the whole study spares each trial Ray's start-up. A node is
``ray start --block`` (the head, or a worker joining one), a child process
stopped with everything below it: never ``ray stop``, which would stop every
Ray on the machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.errors import FedTextError
from common.processes import die_with_parent, free_port, stop_process_group


class RayNode:
    """``ray start --head`` on 127.0.0.1 with ``num_cpus`` CPUs, or a worker node joining ``head``.

    Parameters
    ----------
    log : Path
        Where Ray's own start-up output goes.
    num_cpus : int
        CPUs the node offers (client actors reserve ``client-cpus`` each).
    head : str, optional
        ``HOST:PORT`` of a running head: start a worker node of its cluster
        (on this machine: a second node, as a test of multi-node placement).
    """

    def __init__(self, log: Path, num_cpus: int, head: str | None = None) -> None:
        self.log = log
        self.num_cpus = num_cpus
        self.head = head
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._temp = ""

    @property
    def address(self) -> str:
        """The cluster's address (the head's GCS), whichever node this is."""
        return self.head or f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> RayNode:
        """Start the node and wait until it runs (a head: until its GCS accepts connections)."""
        # Ray's socket paths must stay short: a folder of its own under /tmp,
        # one per node, so that two nodes on one machine keep apart.
        self._temp = tempfile.mkdtemp(prefix="fr")
        ray = Path(sys.executable).parent / "ray"
        if self.head:
            role = [f"--address={self.head}"]
        else:
            self.port = free_port()
            role = ["--head", f"--port={self.port}", "--include-dashboard=false"]
        cmd = [str(ray if ray.exists() else "ray"), "start", "--block", *role, f"--num-cpus={self.num_cpus}",
               "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={self._temp}"]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FedTextError(f"ray start exited with code {self.process.returncode}; see {self.log}")
            if "Ray runtime started" in self.log.read_text(errors="replace") and self._listening():
                return self
            time.sleep(0.3)
        self.stop()
        raise FedTextError(f"Ray node did not come up within {timeout:.0f}s; see {self.log}")

    def _listening(self) -> bool:
        if self.head:  # a worker node has no GCS of its own: "started" is all it says
            return True
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the node and every Ray process under it."""
        if self.process is not None:
            stop_process_group(self.process, grace=5.0)
            self.process = None
        if self._temp:
            import shutil

            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = ""


def check_ray_address(address: str, timeout: float = 3.0) -> str:
    """``HOST:PORT`` of a running Ray cluster's head (its GCS port), checked to answer.

    ``local`` (start a private Ray, the default) and ``auto`` (Ray's own lookup)
    pass unchanged. A malformed or silent address is a one-line ConfigError
    here, before the SuperLink starts, not a Ray timeout a minute into the run.
    """
    from common.errors import ConfigError

    if address in ("local", "auto"):
        return address
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--ray-address {address!r}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: no Ray head answers there ({exc.strerror or exc}); "
                          "start one with `ray start --head --port PORT`") from exc
    return address

