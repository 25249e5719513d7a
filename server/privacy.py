"""The server's side of differential privacy: noise where it adds it, and the accounting.

One object per run, from the ``dp`` config key (:func:`build_privacy`), with the
same four calls in every mode, made by the round loop (``server/rounds.py``):

1. :meth:`allows_round` before a round: would it stay within ``dp-epsilon``?
2. :meth:`prepare` on the round's train instructions: under client-level DP
   with SecAgg, each learns the noise floor t (its share is 1/t of the noise);
3. :meth:`finish` on the round's aggregate: client-level DP discards a SecAgg
   sum of fewer than t clients (it would hold too little noise) or, without
   SecAgg, adds the Gaussian noise itself; then the round is accounted;
4. :meth:`record`: the round's ``privacy`` entry of ``metrics.json``.

``dp record`` accounting happens in the clients (each against its own rows):
the server records the largest epsilon any client reported, and the clients
that refused a round for lack of budget. ``dp client`` accounting happens
here, over the rounds' events; a resumed run replays the events of the
rounds recorded in its checkpoint, so its epsilon continues where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import Message

from common.config import FedTextConfig
from common.messages import CONFIG, DP_NOISE_FLOOR
from common.privacy.accounting import Mechanism, epsilon
from common.privacy.distributed import (
    effective_noise_multiplier,
    gaussian_noise,
    noise_floor,
    noise_multiplier,
    round_mechanism,
    run_scale,
)
from server.aggregation import RoundUpdate

log = logging.getLogger("fedtext.server")


class NoPrivacy:
    """``dp none``: every call is a no-op and rounds carry no ``privacy`` entry."""

    def allows_round(self, server_round: int) -> tuple[bool, str]:
        return True, ""

    def prepare(self, instructions: list[Message]) -> None:
        return None

    def finish(self, update: RoundUpdate) -> RoundUpdate:
        return update

    def record(self) -> dict[str, Any] | None:
        return None

    def restore(self, rounds: list[dict[str, Any]]) -> None:
        return None


class RecordLevelPrivacy(NoPrivacy):
    """``dp record``: the clients account; the server keeps the largest epsilon reported."""

    def __init__(self, cfg: FedTextConfig) -> None:
        self.cfg = cfg
        self.epsilon = 0.0
        self.noise: float | None = None

    def finish(self, update: RoundUpdate) -> RoundUpdate:
        if not update.empty:
            reported = update.train_metrics
            self.epsilon = max(self.epsilon, float(reported.get("dp-epsilon", 0.0)))
            if "dp-noise-multiplier" in reported:
                self.noise = float(reported["dp-noise-multiplier"])
        return update

    def record(self) -> dict[str, Any]:
        return {"mode": "record", "epsilon": self.epsilon, "delta": self.cfg.dp_delta,
                "noise_multiplier": self.noise, "clip": self.cfg.dp_clip,
                "accountant": self.cfg.dp_accountant, "target_epsilon": self.cfg.dp_epsilon}

    def restore(self, rounds: list[dict[str, Any]]) -> None:
        past = [r["privacy"]["epsilon"] for r in rounds if r.get("privacy")]
        self.epsilon = max(past, default=0.0)


class ClientLevelPrivacy(NoPrivacy):
    """``dp client``: clipped updates, noise on their sum, accounted per round here.

    Parameters
    ----------
    cfg : FedTextConfig
    num_values : int
        m, the number of trainable values (an update's length).
    """

    def __init__(self, cfg: FedTextConfig, num_values: int) -> None:
        self.cfg = cfg
        self.num_values = num_values
        self.sigma = noise_multiplier(cfg, num_values)
        self.scale = run_scale(cfg)
        self.events: list[Mechanism] = []
        self.floor = 0
        self.round_sigma: float | None = None

    def _effective(self, survivors: int, floor: int) -> float:
        if not self.cfg.secagg:
            return self.sigma
        return effective_noise_multiplier(self.sigma, self.cfg.dp_clip, self.scale, floor, survivors,
                                          self.num_values)

    def epsilon(self, extra: list[Mechanism] | None = None) -> float:
        return epsilon([*self.events, *(extra or [])], self.cfg.dp_delta, self.cfg.dp_accountant)

    def allows_round(self, server_round: int) -> tuple[bool, str]:
        # The least noise a round can carry: exactly t survivors (or the central noise).
        planned = round_mechanism(self._effective(1, 1) if self.cfg.secagg else self.sigma, self.cfg)
        after = self.epsilon([planned])
        if after > self.cfg.dp_epsilon * (1 + 1e-6):
            return False, (f"privacy budget spent: round {server_round} would take epsilon to {after:.3f} "
                           f"> dp-epsilon {self.cfg.dp_epsilon:g}")
        return True, ""

    def prepare(self, instructions: list[Message]) -> None:
        self.floor = noise_floor(len(instructions), self.cfg.secagg_threshold) if self.cfg.secagg else 0
        for message in instructions:
            message.content.config_records[CONFIG][DP_NOISE_FLOOR] = self.floor

    def finish(self, update: RoundUpdate) -> RoundUpdate:
        self.round_sigma = None
        if update.empty:
            return update
        if self.cfg.secagg:
            if update.num_clients < self.floor:
                # Fewer survivors than the noise was split among: the sum holds
                # less noise than promised, so it must not reach the model.
                why = (f"dp client: {update.num_clients} clients survived, below the noise floor "
                       f"{self.floor}; round discarded")
                log.warning("%s", why)
                return update.discarded(why)
            self.round_sigma = self._effective(update.num_clients, self.floor)
        else:
            # The sum of clipped updates gets N(0, (sigma C)^2); the mean is that over n.
            noise = gaussian_noise(update.mean_update, self.sigma * self.cfg.dp_clip)
            update.mean_update = {k: (v + noise[k] / update.num_clients).astype(np.float32)
                                  for k, v in update.mean_update.items()}
            self.round_sigma = self.sigma
        self.events.append(round_mechanism(self.round_sigma, self.cfg))
        return update

    def record(self) -> dict[str, Any]:
        return {"mode": "client", "epsilon": self.epsilon(), "delta": self.cfg.dp_delta,
                "noise_multiplier": self.round_sigma, "clip": self.cfg.dp_clip,
                "accountant": self.cfg.dp_accountant, "target_epsilon": self.cfg.dp_epsilon,
                "sample_rate": min(1.0, self.cfg.fraction_train),
                **({"noise_floor": self.floor} if self.cfg.secagg else {})}

    def restore(self, rounds: list[dict[str, Any]]) -> None:
        self.events = [Mechanism(float(r["privacy"]["noise_multiplier"]), float(r["privacy"]["sample_rate"]))
                       for r in rounds if r.get("privacy") and r["privacy"].get("noise_multiplier")]


def build_privacy(cfg: FedTextConfig, num_values: int) -> NoPrivacy:
    """The run's privacy object for ``cfg.dp``."""
    if cfg.dp == "record":
        return RecordLevelPrivacy(cfg)
    if cfg.dp == "client":
        return ClientLevelPrivacy(cfg, num_values)
    return NoPrivacy()

