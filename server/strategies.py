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

# The adaptive server optimizers (FedAdam, FedYogi, FedAdagrad) move each weight
# by eta * m / (sqrt(v) + tau). For an update much larger than tau that is about
# eta whatever the update's size; for one much smaller, about eta / tau times it.
# Flower's defaults (eta 0.1 or 0.01, tau 1e-3) suit small networks trained from
# scratch; on a pretrained transformer, whose weights move by a few local lr
# steps per round, a step of 0.01 on every weight wipes out what it learned, and
# tau 1e-3 dwarfs most updates (nothing moves). So both scale with the client's
# peak lr: eta = ETA_PER_LR x lr, tau = TAU_PER_LR x lr (docs/TUNING.md says
# which runs chose the factors).
ETA_PER_LR = {"fedadam": 3.3, "fedyogi": 3.3, "fedadagrad": 3.3}
TAU_PER_LR = 0.33
# FedAvgM: a plain step (server lr 1) with momentum 0.5 accelerates without the
# overshoot momentum 0.9 shows over 10 rounds.
FEDAVGM_SERVER_LR = 1.0


def server_learning_rate(cfg: FedTextConfig) -> float:
    """``server-lr``, or fedtext's default for the strategy when it is 0."""
    if cfg.server_lr:
        return cfg.server_lr
    if cfg.strategy in ETA_PER_LR:
        return ETA_PER_LR[cfg.strategy] * peak_lr(cfg)
    return FEDAVGM_SERVER_LR


def server_tau(cfg: FedTextConfig) -> float:
    """``server-tau``, or fedtext's default (relative to the client lr) when it is 0."""
    return cfg.server_tau or TAU_PER_LR * peak_lr(cfg)


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
    adaptive = {"eta": eta, "eta_l": peak_lr(cfg), "tau": server_tau(cfg)}
    if name == "fedadam":
        return FedAdam(**sampling, **adaptive)
    if name == "fedyogi":
        return FedYogi(**sampling, **adaptive)
    if name == "fedadagrad":
        return FedAdagrad(**sampling, **adaptive)
    if name == "fedavgm":
        return FedAvgM(**sampling, server_learning_rate=eta, server_momentum=cfg.server_momentum)
    raise ValueError(f"unknown strategy {name!r}")  # unreachable: config validated
