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
# steps per round, a step of 0.01 on every weight wipes out what it learned.
# So eta and tau follow the client's peak lr. tau = 3 x lr keeps the many small,
# noisy coordinates in the linear regime (moved like FedAvg moves them, not
# blown up to eta), and eta / tau makes that linear step about FedAvg's: 1 for
# FedYogi and FedAdagrad, 4 for FedAdam, whose bias correction scales its step
# by sqrt(1 - beta_2^t) (0.14 to 0.33 over 10 rounds). The few large updates
# are capped near eta: the adaptive part.
ETA_PER_LR = {"fedadam": 12.0, "fedyogi": 3.0, "fedadagrad": 3.0}
TAU_PER_LR = 3.0
# No server momentum (beta_1 = 0) for FedAdam and FedYogi. Momentum keeps
# applying the large updates of the early, high-lr rounds after the run's lr
# schedule has annealed the clients' steps; under label skew it swings the head
# from one class to the other in the last rounds (FedAdam with beta_1 0.9 peaked
# at 0.78 in round 6 and ended at 0.66; with 0, 0.80: docs/TUNING.md).
ADAPTIVE_BETA_1 = 0.0
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
        return FedAdam(**sampling, **adaptive, beta_1=ADAPTIVE_BETA_1)
    if name == "fedyogi":
        return FedYogi(**sampling, **adaptive, beta_1=ADAPTIVE_BETA_1)
    if name == "fedadagrad":
        return FedAdagrad(**sampling, **adaptive)
    if name == "fedavgm":
        return FedAvgM(**sampling, server_learning_rate=eta, server_momentum=cfg.server_momentum)
    raise ValueError(f"unknown strategy {name!r}")  # unreachable: config validated
