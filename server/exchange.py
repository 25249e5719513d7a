"""Send instructions to nodes and collect their replies, without idle seconds.

Every message the server sends goes through :func:`send` (:func:`exchange`
when it waits for the replies at once): the round's train instructions, each
SecAgg+ stage, the evaluation, the end-of-run notice.

Flower's ``Grid.send_and_receive`` pushes the messages and then pulls the
replies at an interval fixed by the grid: 0.1 s in a simulation, but 3 s on
a deployed SuperLink, so a deployed round waited on average 1.5 s per
exchange (up to 3 s) after its last reply had already arrived, five times a
round under SecAgg+. :func:`exchange` does the same push and pull through the
Grid's public API, polling every :data:`POLL_S` seconds: the replies are
collected within a tenth of a second of their arrival, whatever the grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

# One pull is one small request to the SuperLink; ten a second cost nothing
# next to a round, and match Flower's in-memory (simulation) grid.
POLL_S = 0.1


def exchange(grid: Grid, messages: Iterable[Message], timeout: float | None) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout`` seconds.

    Parameters
    ----------
    grid : Grid
        The run's grid (deployed SuperLink, simulation, or fedtext's in-process grid).
    messages : Iterable[Message]
        Instructions, each addressed to one node.
    timeout : float | None
        Seconds to wait for the replies; None waits until every node has answered.

    Returns
    -------
    list[Message]
        The replies, in the order they arrived; nodes that did not answer in
        time are missing, as with ``Grid.send_and_receive``.
    """
    return list(replies_as_they_arrive(grid, messages, timeout))


def replies_as_they_arrive(grid: Grid, messages: Iterable[Message], timeout: float | None) -> Iterator[Message]:
    """:func:`exchange`, yielding each reply as soon as it is pulled.

    For replies too large to hold all at once (SecAgg+'s masked vectors, one
    update each): the caller folds each into a running result and lets it go.
    """
    return send(grid, messages, timeout).replies()


def send(grid: Grid, messages: Iterable[Message], timeout: float | None) -> InFlight:
    """Push ``messages`` now; collect their replies later with :meth:`InFlight.replies`.

    The server works on something else meanwhile: its central evaluation runs
    while the clients evaluate (``server.rounds``). ``timeout`` counts from now.
    """
    return InFlight(grid, messages, timeout)


class InFlight:
    """Messages pushed to their nodes, whose replies have not been collected yet."""

    def __init__(self, grid: Grid, messages: Iterable[Message], timeout: float | None) -> None:
        self.grid = grid
        self.waiting = set(grid.push_messages(messages))
        self.asked = len(self.waiting)  # how many nodes were sent a message
        self.end = None if timeout is None else time.monotonic() + timeout

    def replies(self) -> Iterator[Message]:
        """The replies, each as soon as it is pulled, until all have come or the timeout has passed."""
        grid, waiting, end = self.grid, self.waiting, self.end
        while waiting:
            batch = list(grid.pull_messages(waiting))
            batch.reverse()
            while batch:  # popped, so that a reply the caller let go is not still held here
                waiting.discard(batch[-1].metadata.reply_to_message_id)
                yield batch.pop()
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            time.sleep(POLL_S if end is None else max(0.0, min(POLL_S, end - time.monotonic())))
