"""Exception raised when the SecAgg+ protocol cannot or must not continue."""

from __future__ import annotations


class SecAggError(Exception):
    """A protocol violation, a cryptographic failure or too few survivors.

    Raised on the client when a request must be refused (e.g. a server that asks
    for both shares of one peer, a bad signature, a ciphertext that fails to
    authenticate) and on the server when the round cannot be completed (e.g. not
    enough survivors). Configuration mistakes raise ``ValueError`` instead.
    """
