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

It also sets how often the SuperNode sends its heartbeat
(``FEDTEXT_SUPERNODE_HEARTBEAT_S``, ``fedtext client --heartbeat``). Flower
declares 30 s, a constant with no flag, and the SuperLink drops a node that has
been silent for twice its interval: a client that dies mid-round holds that
round up for a minute. The node declares its interval itself and Flower's
SuperLink accepts 10 to 1800 s, so a shorter one is the node's own choice,
paid with a small request every few seconds.

Its ClientApps get the message's objects as soon as they land instead of
after Flower's 1 s back-off (``common/object_pulls.py``): the SuperNode lets
its ClientApp start while it is still pulling the objects from the SuperLink.

If Flower's modules no longer have this shape (a later Flower), nothing is
changed and the SuperNode runs with Flower's own waits and heartbeat.
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
HEARTBEAT_ENV = "FEDTEXT_SUPERNODE_HEARTBEAT_S"
# Flower's own interval and the bounds its SuperLink accepts (flwr/common/constant.py).
DEFAULT_HEARTBEAT_S = 30.0
HEARTBEAT_RANGE_S = (10.0, 1800.0)

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


def set_heartbeat(interval: float) -> bool:
    """Declare and send heartbeats every ``interval`` s; False where Flower has changed shape.

    Two modules read Flower's constant: the connection declares it to the
    SuperLink, the sender waits (interval - call timeout) x ~0.8 between beats.
    """
    try:
        from flwr.supercore import heartbeat as sender
        from flwr.supernode import fleet_http_connection as connection
    except ImportError:
        return False
    modules = (sender, connection)
    if not all(isinstance(getattr(m, "HEARTBEAT_DEFAULT_INTERVAL", None), (int, float)) for m in modules):
        return False
    for module in modules:
        module.HEARTBEAT_DEFAULT_INTERVAL = interval
    return True


def hold_object_pulls() -> bool:
    """Answer the ClientApp's pull of an object still on its way when it lands; False where Flower has changed shape."""
    from common.object_pulls import hold_pulls_in_transit

    try:
        from flwr.supernode.servicer.runtime import runtime_handlers
    except ImportError:
        return False
    return hold_pulls_in_transit(runtime_handlers)


def seconds_from_env(name: str, default: float, low: float, high: float,
                     environ: Mapping[str, str] = os.environ) -> float:
    """Seconds from the variable ``name`` (``default`` when unset), within [low, high]."""
    raw = environ.get(name) or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r}: expected seconds between {low:g} and {high:g}")
    return value


def poll_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The cap, from ``FEDTEXT_SUPERNODE_POLL_S`` (0.05 to 3 s: 3 is Flower's own wait)."""
    return seconds_from_env(POLL_ENV, DEFAULT_POLL_S, 0.05, 3.0, environ)


def heartbeat_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The heartbeat interval, from ``FEDTEXT_SUPERNODE_HEARTBEAT_S`` (10 to 1800 s)."""
    return seconds_from_env(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S, *HEARTBEAT_RANGE_S, environ)


def main() -> int | None:
    try:
        cap, interval = poll_seconds(), heartbeat_seconds()
    except ConfigError as exc:
        print(f"fedtext: error: {exc}", file=sys.stderr)
        return 2
    if not cap_idle_waits(cap):
        log.warning("this Flower's SuperNode loop has another shape: running it with its own waits")
    if not hold_object_pulls():
        log.warning("this Flower's SuperNode has no object pull handler: its ClientApps back off as Flower's do")
    if interval != DEFAULT_HEARTBEAT_S and not set_heartbeat(interval):
        log.warning("this Flower's SuperNode heartbeat has another shape: it beats every %.0f s",
                    DEFAULT_HEARTBEAT_S)
    from common.processes import run_flower_entry

    return run_flower_entry("flwr.supernode.cli", "flower_supernode", "flower-supernode")


if __name__ == "__main__":
    sys.exit(main())
