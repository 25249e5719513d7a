"""Flower's ``flower-superlink``, answering pulls of objects in transit as soon as they land.

``fedtext server`` and ``fedtext simulate`` run this module instead of the
``flower-superlink`` script: Flower's own entry point, after both of the
SuperLink's object-pull handlers have been made to hold a pull for an object
that is still arriving (``common/object_pulls.py``):

- the Fleet API's, where a SuperNode pulls the server's instructions while
  the ServerApp is still pushing them (the model, in chunks);
- the runtime API's, where the ServerApp pulls a client's reply (a masked
  update) while that client's SuperNode is still pushing it.

Without it each such pull waits out Flower's 1 s (then 2 s, 4 s) back-off.
Everything else is Flower's. If Flower's modules no longer have this shape,
nothing is changed.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("fedtext.server")


def hold_object_pulls() -> bool:
    """Hold both pull handlers; False where Flower has changed shape (then neither is held)."""
    from common.object_pulls import hold_pulls_in_transit

    try:
        from flwr.superlink.servicer.fleet import fleet_handlers
        from flwr.superlink.servicer.runtime import runtime_handlers
    except ImportError:
        return False
    handlers = (fleet_handlers, runtime_handlers)
    if not all(callable(getattr(h, "pull_object", None)) for h in handlers):
        return False
    return all([hold_pulls_in_transit(h) for h in handlers])


def main() -> int | None:
    if not hold_object_pulls():
        log.warning("this Flower's SuperLink has other pull handlers: pulls back off as Flower's do")
    from common.processes import run_flower_entry

    return run_flower_entry("flwr.superlink.cli", "flower_superlink", "flower-superlink")


if __name__ == "__main__":
    sys.exit(main())
