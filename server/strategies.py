"""The server strategy, chosen by the ``strategy`` config key.

These are Flower's own Message-API strategies, unchanged. fedtext hands each
of them one aggregate per round (see ``server.rounds.apply_update``), so the
strategy maths (FedAvg's average, FedAdam's moments, FedAvgM's momentum) runs
exactly as Flower wrote it, on the trainable parameters.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

from common.config import FedTextConfig
from common.recipe import peak_lr

# Flower's FedOpt defaults (eta = 0.1 or 0.01) suit small CNNs trained from
# scratch. An adaptive server step of that size on every weight of a pretrained
# transformer wipes out what it learned; a few local AdamW steps at 5e-5 move a
# weight by ~1e-3, so the server step is of that order.
DEFAULT_SERVER_LR = {"fedadam": 1e-3, "fedyogi": 1e-3, "fedadagrad": 1e-3, "fedavgm": 1.0}


def server_learning_rate(cfg: FedTextConfig) -> float:
    """``server-lr``, or fedtext's default for the strategy when it is 0."""
    return cfg.server_lr or DEFAULT_SERVER_LR.get(cfg.strategy, 1.0)


def build_strategy(cfg: FedTextConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``, sampling as configured."""
    sampling = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_clients,
        "min_evaluate_nodes": cfg.min_clients if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": cfg.min_clients,
    }
    eta = server_learning_rate(cfg)
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg(**sampling)
    if name == "fedprox":
        return FedProx(**sampling, proximal_mu=cfg.proximal_mu or 0.01)
    if name == "fedadam":
        return FedAdam(**sampling, eta=eta, eta_l=peak_lr(cfg))
    if name == "fedyogi":
        return FedYogi(**sampling, eta=eta, eta_l=peak_lr(cfg))
    if name == "fedadagrad":
        return FedAdagrad(**sampling, eta=eta, eta_l=peak_lr(cfg))
    if name == "fedavgm":
        return FedAvgM(**sampling, server_learning_rate=eta, server_momentum=cfg.server_momentum)
    raise ValueError(f"unknown strategy {name!r}")  # unreachable: config validated
