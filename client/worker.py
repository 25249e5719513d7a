"""A deployed node's warm worker: train and evaluate without a cold start per message.

In deployment Flower runs a fresh ``flwr-clientapp`` process for every message
and keeps nothing between them. A SecAgg+ exchange needs only Flower and the
crypto and starts in 0.3 s, but a train or evaluate message paid 6.6 s of
torch and transformers imports and a model load before its first step, twice
a round.

``fedtext client`` therefore starts one worker per node (``python -m
client.worker``) next to its SuperNode. The worker imports torch and
transformers once and keeps the model and the node's rows between messages
(``client.local``'s caches, as a simulated client's Ray actor does). The
ClientApp, still one process per message as Flower runs it, hands its train
and evaluate work to the worker (:func:`delegate`) and replies itself: the
SecAgg+ masking, and everything else that leaves the node, stays in the
ClientApp. A node without a worker (``fedtext client --no-worker``, or a
worker that does not answer its connection) does the work in the ClientApp
process, as before.

Wire (``multiprocessing.connection`` over a Unix socket in the node's home,
which authenticates both ends with an HMAC challenge over a key that only
this user can read; frames are bytes, never pickles)::

    request   {"op": "train" | "evaluate", "code": fingerprint}  RecordDict (protobuf)  Context (protobuf)
    reply     {"ok": true}                  RecordDict (protobuf)  the Context's state (protobuf)
              {"ok": false, "error": class, "module": module, "message": text}
              {"ok": false, "code": fingerprint, "message": text}   (other code: not done)

The worker runs the fedtext installed on the node; the ClientApp runs the app
the server sent. Where the two differ (the organisation upgraded one side
only), the worker refuses the work (:func:`code_fingerprint`) and the
ClientApp does it itself, with the server's code.

The node's config names the socket (``worker``) and the key file
(``worker-key``); both live in the node's home.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import Context, RecordDict

    from common.processes import SocketServer

log = logging.getLogger("fedtext.client")

WORKER = "worker"  # node config key: the worker's socket
WORKER_KEY = "worker-key"  # node config key: the file holding its key

# Errors that travel back as their own class, so that the server's report
# reads the same with or without a worker; anything else arrives as a RuntimeError.
_ERROR_MODULES = ("common.errors", "client.privacy")


class WorkerUnavailable(ConnectionError):
    """No worker answered at the node's socket: do the work in this process."""


def delegate(op: str, content: RecordDict, context: Context) -> RecordDict:
    """Have the node's worker carry out ``op`` ("train" or "evaluate"); return its reply.

    ``context.state`` comes back as the worker left it (the privacy ledger
    lives there). Raises :class:`WorkerUnavailable` when nobody answers at the
    socket, or when the worker runs other fedtext code than this ClientApp:
    nothing was done then. Otherwise a worker's failure is this message's failure.
    """
    from flwr.common.serde import context_to_proto, recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    node = context.node_config
    try:
        conn = Client(str(node[WORKER]), family="AF_UNIX", authkey=Path(str(node[WORKER_KEY])).read_bytes())
    except (OSError, EOFError, AuthenticationError) as exc:
        raise WorkerUnavailable(f"no worker at {node[WORKER]}: {exc}") from exc
    with conn:
        conn.send_bytes(json.dumps({"op": op, "code": code_fingerprint()}).encode())
        conn.send_bytes(recorddict_to_proto(content).SerializeToString())
        conn.send_bytes(context_to_proto(context).SerializeToString())
        head = json.loads(conn.recv_bytes())
        if "code" in head:
            raise WorkerUnavailable(head.get("message", "the worker runs other fedtext code"))
        if not head.get("ok"):
            raise _rebuild_error(head)
        reply = ProtoRecordDict.FromString(conn.recv_bytes())
        state = ProtoRecordDict.FromString(conn.recv_bytes())
    context.state = recorddict_from_proto(state)
    return recorddict_from_proto(reply)


def code_fingerprint() -> str:
    """A hash of the fedtext code that train and evaluate run (the ``client`` and ``common`` packages).

    Computed from the files this process imports: the server's app in a
    ClientApp, the node's installed fedtext in the worker.
    """
    import hashlib

    import client
    import common

    digest = hashlib.sha256()
    for package in (client, common):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _rebuild_error(head: dict[str, str]) -> Exception:
    message = head.get("message", "")
    if head.get("module") in _ERROR_MODULES:
        cls = getattr(importlib.import_module(head["module"]), head.get("error", ""), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    return RuntimeError(f"{head.get('error', 'error')} in the node's worker: {message}")


# --- the worker process ------------------------------------------------------------


def serve(socket: Path, key: bytes) -> None:
    """Answer requests one at a time (a SuperNode handles one message at a time) until killed."""
    socket.unlink(missing_ok=True)
    # Listen before the heavy imports: a message that arrives meanwhile waits
    # for them here instead of paying for them again in its ClientApp process.
    with Listener(str(socket), family="AF_UNIX", authkey=key) as listener:
        from client.local import evaluate_locally, train_locally  # torch, transformers: once

        handlers = {"train": train_locally, "evaluate": evaluate_locally}
        code = code_fingerprint()
        print(f"fedtext worker: ready on {socket} (pid {os.getpid()}, code {code})", flush=True)
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError, AuthenticationError) as exc:  # a peer without the key, or gone
                log.warning("worker: refused a connection: %s", exc)
                continue
            with conn:
                try:
                    _answer(conn, handlers, code)
                except (OSError, EOFError) as exc:  # the ClientApp went away (killed, timed out)
                    log.warning("worker: could not answer: %s", exc)


def write_key(path: Path) -> None:
    """A fresh random key, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    path.chmod(0o600)


def _answer(conn: Connection, handlers: dict, code: str) -> None:
    from flwr.common.serde import context_from_proto, recorddict_from_proto, recorddict_to_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    try:
        request = json.loads(conn.recv_bytes())
        content = recorddict_from_proto(ProtoRecordDict.FromString(conn.recv_bytes()))
        context = context_from_proto(ProtoContext.FromString(conn.recv_bytes()))
    except (OSError, EOFError, ValueError) as exc:
        log.warning("worker: dropped a malformed request: %s", exc)
        return
    op = request.get("op")
    if request.get("code") != code:
        # Training with other code than the app the server sent could change what
        # the update means: the ClientApp does the work itself instead.
        why = (f"the node's worker runs other fedtext code ({code}) than this run's app "
               f"({request.get('code')}); reinstall fedtext at the server's version to use it")
        log.warning("worker: refused %s: %s", op, why)
        conn.send_bytes(json.dumps({"ok": False, "code": code, "message": why}).encode())
        return
    try:
        if op not in handlers:
            raise ValueError(f"unknown op {op!r}; expected one of {sorted(handlers)}")
        reply = handlers[op](content, context)
    except Exception as exc:  # noqa: BLE001 - the ClientApp turns it into its error reply
        head = {"ok": False, "error": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
        log.warning("worker: %s failed: %s: %s", op, type(exc).__name__, exc)
        conn.send_bytes(json.dumps(head).encode())
        return
    conn.send_bytes(json.dumps({"ok": True}).encode())
    conn.send_bytes(recorddict_to_proto(reply).SerializeToString())
    conn.send_bytes(recorddict_to_proto(context.state).SerializeToString())


# --- started by `fedtext client` ---------------------------------------------------


@dataclass
class WorkerProcess:
    """A running worker and where the ClientApp finds it."""

    server: SocketServer
    key_file: Path

    @property
    def address(self) -> tuple[Path, Path]:
        return self.server.socket, self.key_file

    def stop(self) -> None:
        self.server.stop()


def start_worker(home: Path, env: dict[str, str], ready_timeout: float = 30.0) -> WorkerProcess:
    """Start the node's worker; return once it listens (its imports continue after that).

    Its output goes to ``worker.log`` in the node's home; it dies with this
    process, even when this one is killed.
    """
    from common.processes import start_socket_server

    key_file = home / "worker.key"
    write_key(key_file)
    server = start_socket_server("client.worker", ["--key-file", str(key_file)], home, "worker", env,
                                 ready_timeout, "--no-worker runs without it")
    return WorkerProcess(server, key_file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m client.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on.")
    parser.add_argument("--key-file", type=Path, required=True, help="File holding the shared key.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    serve(args.socket, args.key_file.read_bytes())


if __name__ == "__main__":
    main()
