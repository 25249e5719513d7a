"""The fedtext ClientApp: Flower calls these handlers with the server's instructions.

In deployment every message starts a fresh ``flwr-clientapp`` process, so this
module imports only Flower and the message contract. Train and evaluate go to
the node's warm worker when ``fedtext client`` started one (``client.worker``);
otherwise torch and transformers are imported inside the handlers, by
``client.local``.
"""

import logging

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.journal import note
from client.secagg_mod import secagg_mod
from common.messages import ARRAYS, RUN_END, SECAGG, packed, parse_run_end_notice, record_bytes

app = ClientApp()
log = logging.getLogger("fedtext.client")


# secagg_mod runs the secure-aggregation stages around this handler: the
# update it returns is masked before it leaves the node (client/secagg_mod.py).
@app.train(mods=[secagg_mod])
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the received global model on local data; reply with the update."""
    reply = _carry_out("train", msg.content, context)
    if SECAGG not in msg.content.config_records:  # else secagg_mod masks it, and notes the masked upload
        reply.array_records[ARRAYS] = packed(reply.array_records[ARRAYS])
        note(context, "sent", bytes=record_bytes(reply.array_records[ARRAYS]), masked=False)
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local held-out rows."""
    return Message(_carry_out("evaluate", msg.content, context), reply_to=msg)


def _carry_out(op: str, content: RecordDict, context: Context) -> RecordDict:
    """Train or evaluate: in the node's warm worker when it has one, else here."""
    from client.worker import WORKER, WorkerUnavailable, delegate

    if WORKER in context.node_config:
        try:
            return delegate(op, content, context)
        except WorkerUnavailable as exc:
            log.warning("%s; working in the ClientApp process instead", exc)
    from client import local

    return local.train_locally(content, context) if op == "train" else local.evaluate_locally(content, context)


@app.query(RUN_END.split(".", 1)[1])
def run_end(msg: Message, context: Context) -> Message:
    """The server's end-of-run notice: noted for ``fedtext client``, which then exits."""
    from flwr.app import RecordDict

    note(context, "run-end", status=parse_run_end_notice(msg.content))
    return Message(RecordDict(), reply_to=msg)
