"""The design claim of server/aggregation.py: one synthetic reply gives the textbook update.

fedtext hands each Flower strategy ONE reply per round, ``current + mean update``
with weight ``sum n_i`` (``apply_update``), instead of the clients' replies. For
every strategy in scope, over several rounds, the resulting global arrays must
equal both

- the textbook update written here independently in numpy (float64), and
- what the same Flower strategy computes from the clients' replies in the clear.

The FedOpt family follows Reddi et al. 2021 ("Adaptive Federated Optimization")
as Flower 1.42 parametrizes it: m and v start at 0, FedAdam's step uses the
bias-corrected ``eta * sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))`` for round t,
FedYogi and FedAdagrad use ``eta`` as is. FedAvgM is momentum SGD on the
pseudo-gradient ``current - average`` with the server learning rate.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import FedTextConfig
from server.aggregation import RoundUpdate, apply_update
from server.strategies import build_strategy, server_learning_rate

WEIGHTS = [7, 30, 113]  # unequal example counts of the 3 clients
ROUNDS = 3
SHAPES = {"encoder.weight": (4, 6), "encoder.bias": (6,), "classifier.weight": (2, 6)}


class ListingGrid(Grid):
    """Just enough of a Grid for ``configure_train``: it lists three nodes."""

    def __init__(self, nodes: Iterable[int] = (11, 22, 33)) -> None:
        self._nodes = list(nodes)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def set_run(self, run):  # noqa: ANN001, ANN201
        raise NotImplementedError

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        raise NotImplementedError

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        raise NotImplementedError


# --- the textbook, in float64 ------------------------------------------------------


class Textbook:
    """Server optimizers written from the papers (as Flower parametrizes them)."""

    def __init__(self, name: str, cfg: FedTextConfig, strategy: object) -> None:
        self.name = name
        self.eta = server_learning_rate(cfg)
        self.momentum = cfg.server_momentum
        # FedOpt hyper-parameters fedtext leaves at Flower's defaults.
        self.beta_1 = getattr(strategy, "beta_1", 0.0)
        self.beta_2 = getattr(strategy, "beta_2", 0.0)
        self.tau = getattr(strategy, "tau", 0.0)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.buf: dict[str, np.ndarray] = {}

    def step(self, t: int, x: dict[str, np.ndarray], clients: list[dict[str, np.ndarray]],
             weights: list[int]) -> dict[str, np.ndarray]:
        total = float(sum(weights))
        out = {}
        for k, xk in x.items():
            avg = sum(w * c[k] for c, w in zip(clients, weights, strict=True)) / total
            delta = avg - xk  # the pseudo-gradient, as an ascent direction
            if self.name in ("fedavg", "fedprox"):
                out[k] = avg
                continue
            if self.name == "fedavgm":
                grad = xk - avg
                self.buf[k] = grad if k not in self.buf else self.momentum * self.buf[k] + grad
                out[k] = xk - self.eta * self.buf[k]
                continue
            m = self.m.get(k, np.zeros_like(xk))
            v = self.v.get(k, np.zeros_like(xk))
            m = self.beta_1 * m + (1.0 - self.beta_1) * delta
            if self.name == "fedadam":
                v = self.beta_2 * v + (1.0 - self.beta_2) * delta**2
                lr = self.eta * np.sqrt(1.0 - self.beta_2 ** (t + 1)) / (1.0 - self.beta_1 ** (t + 1))
            elif self.name == "fedyogi":
                v = v - (1.0 - self.beta_2) * delta**2 * np.sign(v - delta**2)
                lr = self.eta
            elif self.name == "fedadagrad":
                v = v + delta**2
                lr = self.eta
            else:  # pragma: no cover
                raise AssertionError(self.name)
            self.m[k], self.v[k] = m, v
            out[k] = xk + lr * m / (np.sqrt(v) + self.tau)
        return out


# --- the two ways of feeding a Flower strategy -----------------------------------------


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _reply(arrays: dict[str, np.ndarray], num_examples: int) -> Message:
    return Message(
        RecordDict({"arrays": _record(arrays), "metrics": MetricRecord({"num-examples": num_examples})}),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )


def _configure(strategy: object, t: int, x: dict[str, np.ndarray]) -> None:
    # As server.rounds does each round: FedOpt stores the current arrays here.
    messages = list(strategy.configure_train(t, _record(x), ConfigRecord({}), ListingGrid()))
    assert len(messages) == 3


CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"server_lr": 0.05, "server_momentum": 0.5, "proximal_mu": 0.1}, id="custom-eta"),
]
STRATEGIES = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm"]


@pytest.mark.usefixtures("flwr_identity")
@pytest.mark.parametrize("changes", CONFIGS)
@pytest.mark.parametrize("name", STRATEGIES)
def test_one_synthetic_reply_gives_the_textbook_update(name: str, changes: dict) -> None:
    cfg = FedTextConfig(strategy=name, **changes)
    via_aggregate, in_clear = build_strategy(cfg), build_strategy(cfg)
    book = Textbook(name, cfg, via_aggregate)
    rng = np.random.default_rng(10 * STRATEGIES.index(name) + len(changes))
    start = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    x_agg, x_clear, x_book = dict(start), dict(start), {k: v.astype(np.float64) for k, v in start.items()}

    for t in range(1, ROUNDS + 1):
        # Clients' updates this round: different sizes and directions per client.
        updates = [{k: (0.02 * (i + 1) * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
                   for i in range(3)]

        # fedtext: one example-weighted mean update, one synthetic reply.
        _configure(via_aggregate, t, x_agg)
        total = sum(WEIGHTS)
        mean = {k: (sum(w * u[k].astype(np.float64) for u, w in zip(updates, WEIGHTS, strict=True))
                    / total).astype(np.float32) for k in SHAPES}
        new_agg = _numpy(apply_update(via_aggregate, t, _record(x_agg), RoundUpdate(mean, total, 3)))

        # Flower as designed: the clients' models in the clear, weighted by num-examples.
        _configure(in_clear, t, x_clear)
        replies = [_reply({k: x_clear[k] + u[k] for k in SHAPES}, w)
                   for u, w in zip(updates, WEIGHTS, strict=True)]
        arrays, _ = in_clear.aggregate_train(t, replies)
        new_clear = {k: v.astype(np.float32) for k, v in _numpy(arrays).items()}

        # The textbook, in float64.
        clients_book = [{k: x_book[k] + u[k].astype(np.float64) for k in SHAPES} for u in updates]
        new_book = book.step(t, x_book, clients_book, WEIGHTS)

        for k in SHAPES:
            assert new_agg[k].dtype == np.float32
            step_book = new_book[k] - x_book[k]
            assert np.abs(step_book).max() > 1e-4, "degenerate round: the server did not move"
            # Compare the server's steps (not just the arrays, which are dominated by x).
            np.testing.assert_allclose(new_agg[k] - x_agg[k], step_book, rtol=2e-3, atol=5e-7,
                                       err_msg=f"{name} round {t} '{k}': synthetic reply vs textbook")
            np.testing.assert_allclose(new_clear[k] - x_clear[k], step_book, rtol=2e-3, atol=5e-7,
                                       err_msg=f"{name} round {t} '{k}': clear replies vs textbook")
            np.testing.assert_allclose(new_agg[k], new_clear[k], rtol=1e-5, atol=1e-6)
        x_agg, x_clear, x_book = new_agg, new_clear, new_book


def test_strategy_settings_follow_the_config() -> None:
    cfg = FedTextConfig(strategy="fedavgm", server_lr=0.3, server_momentum=0.7)
    s = build_strategy(cfg)
    assert (s.server_learning_rate, s.server_momentum, s.server_opt) == (0.3, 0.7, True)
    # The adaptive optimizers' step and tau follow the client's peak lr unless given.
    adam = build_strategy(FedTextConfig(strategy="fedadam", freeze="head"))
    head_lr = FedTextConfig(freeze="head").replace(lr=0.0)
    from common.recipe import peak_lr
    from server.strategies import ETA_PER_LR, TAU_PER_LR

    assert adam.eta == pytest.approx(ETA_PER_LR["fedadam"] * peak_lr(head_lr))
    assert adam.tau == pytest.approx(TAU_PER_LR * peak_lr(head_lr)) and adam.eta_l == peak_lr(head_lr)
    assert adam.beta_1 == 0.0 == build_strategy(FedTextConfig(strategy="fedyogi")).beta_1
    given = build_strategy(FedTextConfig(strategy="fedyogi", server_lr=0.02, server_tau=1e-6))
    assert (given.eta, given.tau) == (0.02, 1e-6)
    assert build_strategy(FedTextConfig(strategy="fedprox", proximal_mu=0.3)).proximal_mu == 0.3
    s = build_strategy(FedTextConfig(min_clients=3, fraction_evaluate=0.0))
    assert (s.min_train_nodes, s.min_available_nodes, s.min_evaluate_nodes) == (3, 3, 0)


@pytest.mark.usefixtures("flwr_identity")
def test_feeding_the_mean_update_alone_would_be_wrong() -> None:
    """Guard of the test itself: apply_update's ``current +`` matters for FedAvg."""
    cfg = FedTextConfig(strategy="fedavg")
    strategy = build_strategy(cfg)
    x = {"w": np.ones(3, np.float32)}
    _configure(strategy, 1, x)
    out = _numpy(apply_update(strategy, 1, _record(x), RoundUpdate({"w": np.full(3, 0.5, np.float32)}, 10, 1)))
    np.testing.assert_allclose(out["w"], 1.5)


def test_client_metrics_are_averaged_over_clients_in_both_paths() -> None:
    from server.aggregation import client_mean_metrics

    # The secure path never sees example counts, so neither path weighs by them.
    metrics = [{"num-examples": 10, "train-loss": 1.0, "train-steps": 2, "only-here": 5.0},
               {"num-examples": 30, "train-loss": 0.0, "train-steps": 4}]
    assert client_mean_metrics(metrics) == {"train-loss": 0.5, "train-steps": 3.0}
    assert client_mean_metrics([]) == {}
