"""Before a DP run starts: is the plan possible, and what will it cost? (one line, or one error)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from common.errors import ConfigError
from common.privacy.distributed import (
    check_noise_range,
    noise_floor,
    noise_multiplier,
    run_scale,
)
from common.privacy.dpsgd import plan_for

if TYPE_CHECKING:
    from common.config import FedTextConfig


def check_plan(cfg: FedTextConfig, num_values: int, client_rows: Sequence[int] = ()) -> str:
    """Calibrate the run's noise and check it fits; one line describing it.

    Parameters
    ----------
    num_values : int
        Trainable values of the model (the length of an update).
    client_rows : sequence of int
        The simulated clients' training rows, when known: record-level DP
        calibrates for the smallest and the largest.

    Raises
    ------
    ConfigError
        A delta too large for a client, an unreachable epsilon, or noise
        that SecAgg's bit width cannot hold, naming the key to change.
    """
    target = f"epsilon {cfg.dp_epsilon:g} at delta {cfg.dp_delta:g} over {cfg.rounds} rounds"
    if cfg.dp == "record":
        if not client_rows:
            return f"record-level DP: {target}, each client calibrating for its own rows"
        plans = [plan_for(n, cfg) for n in sorted({min(client_rows), max(client_rows)})]
        sigmas = " to ".join(f"{p.noise_multiplier:.3f}" for p in plans)
        return (f"record-level DP: {target}; noise multiplier {sigmas} "
                f"(clients of {plans[0].rows} to {plans[-1].rows} rows, per-row clip {cfg.dp_clip:g})")
    sigma = noise_multiplier(cfg, num_values)
    line = f"client-level DP: {target}; noise multiplier {sigma:.3f} on updates clipped to {cfg.dp_clip:g}"
    if not cfg.secagg:
        return line + ", added by the server (--no-secagg)"
    sampled = max(1, math.ceil(cfg.fraction_train * cfg.clients - 1e-9))
    floor = noise_floor(sampled, cfg.secagg_threshold)
    try:
        check_noise_range((1 << cfg.secagg_bits) - 1, cfg.secagg_bits, cfg.clients, sigma, cfg.dp_clip,
                          run_scale(cfg), floor)
    except ValueError as exc:
        raise ConfigError(f"config key 'secagg-bits': {exc}") from None
    return line + f", added by the clients under SecAgg (each 1/{floor} of it)"
