"""SecAgg+ secure aggregation core (Bell et al. 2020 over Bonawitz et al. 2017).

Pure Python on top of ``cryptography`` and ``numpy``; no Flower import, so the
transport layer can wrap it. Start with :mod:`.messages` for the message
table, :class:`SecAggServer` and :class:`SecAggClient` for the stages, and
:mod:`.encoding` for the fixed-point maths.
"""

from .client import SecAggClient
from .encoding import (
    decode_sum,
    encode_update,
    quantization_error_bound,
    reference_weighted_mean,
)
from .errors import SecAggError
from .graph import graph_degree, neighbour_graph
from .local import run_local_round
from .messages import stage_of
from .params import SecAggParams
from .server import SecAggResult, SecAggServer

__all__ = [
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggResult",
    "SecAggServer",
    "decode_sum",
    "encode_update",
    "graph_degree",
    "neighbour_graph",
    "quantization_error_bound",
    "reference_weighted_mean",
    "run_local_round",
    "stage_of",
]
