"""The fedtext ClientApp: Flower calls these handlers with the server's instructions.

In deployment every message starts a fresh ``flwr-clientapp`` process, so this
module imports only Flower and the message contract; torch and transformers
are imported inside the handlers, by ``client.local``.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.secagg_mod import secagg_mod

app = ClientApp()


# secagg_mod runs the secure-aggregation stages around this handler: the
# update it returns is masked before it leaves the node (client/secagg_mod.py).
@app.train(mods=[secagg_mod])
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the received global model on local data; reply with the update."""
    from client.local import train_locally

    return Message(train_locally(msg.content, context), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local held-out rows."""
    from client.local import evaluate_locally

    return Message(evaluate_locally(msg.content, context), reply_to=msg)
