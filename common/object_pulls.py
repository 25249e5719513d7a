"""Flower's relays answer a pull for an object in transit when it lands, not after a second's back-off.

A Flower message travels as a tree of objects (the message, its records, each
array and its chunks). The process that relays it (the SuperLink between the
ServerApp and the SuperNodes, a SuperNode between the SuperLink and its
ClientApp) makes the message visible as soon as its tree is registered, while
the objects are still arriving. A pull for one of those is answered "not
available yet", and Flower's puller (``pull_objects`` in
``flwr/supercore/inflatable/inflatable_utils.py``, flwr 1.42) then sleeps 1 s,
2 s, 4 s... before asking again: constants, no flag. Deployed, a ClientApp
forked in 0.1 s asked for the model while its SuperNode was still receiving
it, and slept 3 s in every train and evaluate message (docs/BENCHMARKS.md).

:func:`hold_pulls_in_transit` makes a relay hold such a pull until the object
lands (looking every :data:`LOOK_S`, at most :data:`HOLD_S`), then answer: the
puller gets the object on its first try, and its own back-off remains for an
object that takes longer. Each held pull occupies one of the web server's
worker threads, so at most :data:`MAX_HELD` are held at once in a process
(over all its handlers); beyond that a pull is answered at once, as Flower does.

This module knows only the shape of Flower's handler (a module-level
``pull_object`` returning a response with ``object_found`` and
``object_available``); the SuperLink (``server/superlink_process.py``) and the
SuperNode (``client/supernode.py``) each apply it to their own handlers.
"""

from __future__ import annotations

import functools
import threading
import time
from types import ModuleType
from typing import Any

HOLD_S = 5.0
LOOK_S = 0.02
# Flower's pullers run 2 requests at a time each (FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS);
# the web server's thread pool (anyio's default: 40) also serves pushes and heartbeats.
MAX_HELD = 16
_HELD = threading.BoundedSemaphore(MAX_HELD)  # shared by every handler this process holds


def hold_pulls_in_transit(handlers: ModuleType, hold_s: float = HOLD_S, look_s: float = LOOK_S,
                          slots: threading.BoundedSemaphore = _HELD) -> bool:
    """Replace ``handlers.pull_object`` with one that waits for an object in transit.

    ``slots`` bounds how many pulls are held at once (the process's :data:`MAX_HELD`).
    Returns False, changing nothing, where the module has no ``pull_object``
    (a later Flower); True once it is in place (also when it already was).
    """
    original = getattr(handlers, "pull_object", None)
    if not callable(original):
        return False
    if getattr(original, "holds_in_transit", False):
        return True

    @functools.wraps(original)
    def pull_object(*args: Any, **kwargs: Any) -> Any:
        response = original(*args, **kwargs)
        if not _in_transit(response) or not slots.acquire(blocking=False):
            return response
        try:
            deadline = time.monotonic() + hold_s
            while _in_transit(response) and time.monotonic() < deadline:
                time.sleep(look_s)
                response = original(*args, **kwargs)
        finally:
            slots.release()
        return response

    pull_object.holds_in_transit = True  # type: ignore[attr-defined]
    handlers.pull_object = pull_object
    return True


def _in_transit(response: Any) -> bool:
    """Registered with its message but not arrived yet: what Flower answers with "retry later"."""
    return bool(getattr(response, "object_found", False)) and not getattr(response, "object_available", True)
