"""Flower's ``flower-supernode``, with its idle waits capped: the next message is heard in 0.2 s, not 3 s.

Flower's SuperNode (``flwr/supernode/start_client_internal.py``, flwr 1.42)
sleeps 3 s after every pull that finds no message for it, and 0.5 s between
looks for the ClientApp's reply; neither has a flag. A SecAgg+ round is five
exchanges (four stages and the evaluation), and in each the clients that
replied first are asleep when the server, having heard from the last one,
sends the next stage: a deployed round waited seconds per exchange for
nothing (docs/BENCHMARKS.md, "Deployment rounds against simulated rounds").

``fedtext client`` runs this module instead of the ``flower-supernode``
script: Flower's own entry point, after :func:`cap_idle_waits` has bounded the
sleeps of that one module. Everything else is Flower's: the connection, the
retries, authentication, the ClientApp processes. The cost is more pulls
while idle: one small request per node every ``FEDTEXT_SUPERNODE_POLL_S``
seconds (default 0.2) instead of every 3.

If Flower's module no longer has this shape (a later Flower), nothing is
changed and the SuperNode runs with Flower's own waits.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping

from common.errors import ConfigError

POLL_ENV = "FEDTEXT_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.2

log = logging.getLogger("fedtext.client")


class _CappedTime:
    """The ``time`` module as one module sees it, with ``sleep`` bounded by ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def cap_idle_waits(cap: float) -> bool:
    """Bound the sleeps of Flower's SuperNode loop by ``cap`` seconds; False where Flower has changed shape."""
    try:
        from flwr.supernode import start_client_internal as loop
    except ImportError:
        return False
    if getattr(loop, "time", None) is not time:
        return False
    loop.time = _CappedTime(cap)
    return True


def poll_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The cap, from ``FEDTEXT_SUPERNODE_POLL_S`` (0.05 to 3 s: 3 is Flower's own wait)."""
    raw = environ.get(POLL_ENV) or str(DEFAULT_POLL_S)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 3.0:
        raise ConfigError(f"{POLL_ENV}={raw!r}: expected seconds between 0.05 and 3")
    return value


def main() -> int | None:
    try:
        cap = poll_seconds()
    except ConfigError as exc:
        print(f"fedtext: error: {exc}", file=sys.stderr)
        return 2
    if not cap_idle_waits(cap):
        log.warning("this Flower's SuperNode loop has another shape: running it with its own waits")
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    return flower_supernode()


if __name__ == "__main__":
    sys.exit(main())
