r"""Client-level DP: clipped updates, and noise that the server never sees removed.

Notation: client i's update x_i (all trainable arrays, flattened), clipped to
L2 norm C (``dp-clip``); sigma the noise multiplier; t the fewest clients
whose noise a round's sum must contain (:func:`noise_floor`).

With secure aggregation (``common.secagg``), the update is quantized to
levels s = L / (2 C_e) per unit (L = 2**bits - 1, C_e = ``secagg-clip``) and
each client adds integer noise before masking:

    N_i ~ Skellam(mu),  mu = (sigma C s)^2 / (2 t)      variance 2 mu = (sigma C s)^2 / t

Skellam (the difference of two Poisson draws) is closed under summation
(Agarwal, Kairouz and Liu, NeurIPS 2021), so the sum over n >= t survivors is
exactly Skellam(n mu), variance (n / t) (sigma C s)^2: the server unmasks a sum
that already carries noise at least sigma C (in update units), and never
sees it without. Stochastic rounding moves each element by less than one
level, so one client changes the integer sum by at most C s + sqrt(m) in L2:
:func:`effective_noise_multiplier` accounts with that sensitivity and with the
Skellam noise treated as Gaussian of the same variance (its Renyi divergence
exceeds the Gaussian's by O(1/mu^2), and mu is above 1e10 at fedtext's bit
widths; docs/PRIVACY.md).

Without secure aggregation the server adds Gaussian noise N(0, (sigma C)^2) to
the sum of the clipped updates (:func:`gaussian_noise`), the central mode of
Flower's DP strategies.
"""

from __future__ import annotations

import functools
import math
import secrets
from typing import TYPE_CHECKING

import numpy as np

from common.errors import ConfigError
from common.privacy.accounting import Mechanism, calibrate

if TYPE_CHECKING:
    from common.config import FedTextConfig

#: Noise beyond this many standard deviations is treated as impossible when
#: checking that the modular sum cannot wrap (P < 1e-80 for a Gaussian).
TAIL_SIGMAS = 20.0


def clip_update(update: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` down to L2 norm ``clip`` (over all arrays); return it and its norm before."""
    norm = math.sqrt(sum(float(np.dot(a.ravel().astype(np.float64), a.ravel().astype(np.float64)))
                         for a in update.values()))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: (a * factor).astype(a.dtype) for k, a in update.items()}, norm


def round_mechanism(sigma: float, cfg: FedTextConfig) -> Mechanism:
    """One round as an accounting event: the Gaussian on the sum, sampled at ``fraction-train``."""
    return Mechanism(sigma, min(1.0, cfg.fraction_train))


def noise_multiplier(cfg: FedTextConfig, num_values: int) -> float:
    """sigma for ``rounds`` rounds within ``dp-epsilon``: what the clients' noise must sum to.

    Under SecAgg the rounding of ``num_values`` elements raises the integer
    sensitivity (:func:`effective_noise_multiplier`): sigma is raised by the
    same factor, so that the noise the accountant sees is the calibrated one.

    Raises
    ------
    ConfigError
        When the target cannot be reached for the planned rounds.
    """
    needed = _calibrated(min(1.0, cfg.fraction_train), cfg.rounds, cfg.dp_epsilon, cfg.dp_delta,
                         cfg.dp_accountant)
    if not cfg.secagg:
        return needed
    scale = run_scale(cfg)
    return needed * (cfg.dp_clip * scale + math.sqrt(num_values)) / (cfg.dp_clip * scale)


@functools.lru_cache(maxsize=32)
def _calibrated(rate: float, rounds: int, target: float, delta: float, kind: str) -> float:
    try:
        return calibrate(lambda s: [Mechanism(s, rate, rounds)], target, delta, kind)
    except ValueError as exc:
        raise ConfigError(f"config key 'dp-epsilon': {exc} ({rounds} rounds, client sampling rate "
                          f"{rate:g})") from None


def noise_floor(sampled: int, threshold: float) -> int:
    """Fewest survivors a noisy round accepts: ``ceil(threshold x sampled)``, at least 1.

    Each client adds 1/t of the noise, so a sum of fewer than t clients would
    carry less than the promised noise: the server discards such a round.
    """
    return max(1, math.ceil(threshold * sampled - 1e-9))


def levels_per_unit(levels: int, element_clip: float) -> float:
    """s: quantization levels per unit of update (``common.secagg.encoding``, weight 1)."""
    return levels / (2.0 * element_clip)


def run_scale(cfg: FedTextConfig) -> float:
    """s for a run's ``secagg-bits`` and ``secagg-clip``."""
    return levels_per_unit((1 << cfg.secagg_bits) - 1, cfg.secagg_clip)


def client_noise_variance(sigma: float, clip: float, scale: float, floor: int) -> float:
    """Variance, in levels^2, of the Skellam noise each client adds: (sigma C s)^2 / t."""
    return (sigma * clip * scale) ** 2 / floor


def skellam_noise(size: int, variance: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``size`` draws of Skellam(mu), mu = variance / 2: int64, mean 0, the given variance.

    Seeded from the OS's CSPRNG; numpy's PCG64 then draws the Poisson pairs.
    """
    rng = rng or np.random.default_rng(secrets.randbits(128))
    mu = variance / 2.0
    return rng.poisson(mu, size).astype(np.int64) - rng.poisson(mu, size).astype(np.int64)


def gaussian_noise(like: dict[str, np.ndarray], std: float,
                   rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Gaussian noise of standard deviation ``std`` shaped like ``like`` (float64)."""
    rng = rng or np.random.default_rng(secrets.randbits(128))
    return {k: rng.normal(0.0, std, a.shape) for k, a in like.items()}


def effective_noise_multiplier(sigma: float, clip: float, scale: float, floor: int,
                               survivors: int, num_values: int) -> float:
    """The noise multiplier that a SecAgg sum of ``survivors`` noisy clients carries.

    Noise standard deviation sqrt(survivors / t) sigma C s over the integer
    sensitivity C s + sqrt(m) (stochastic rounding adds < 1 level per element).
    """
    std = math.sqrt(survivors / floor) * sigma * clip * scale
    return std / (clip * scale + math.sqrt(num_values))


def check_noise_range(levels: int, bits: int, clients: int, sigma: float, clip: float,
                      scale: float, floor: int) -> None:
    """Refuse noise that could wrap the modular sum of ``clients`` encodings.

    The centred decoding (``common.secagg.encoding.decode_sum``) is exact while
    |sum of (values - L/2) + noise| < 2**31; values contribute at most
    clients * L / 2 and the noise stays within :data:`TAIL_SIGMAS` of its
    standard deviation.

    Raises
    ------
    ValueError
        One line naming ``secagg-bits`` and the largest width that fits.
    """
    noise_std = math.sqrt(clients * client_noise_variance(sigma, clip, scale, floor))
    if clients * levels / 2.0 + TAIL_SIGMAS * noise_std < 2.0**31:
        return
    # noise_std scales with L (s = L / 2C_e): find the widest L that fits.
    per_level = (clients / 2.0 + TAIL_SIGMAS * noise_std / levels)
    fits = max(0, math.floor(math.log2(2.0**31 / per_level + 1)))
    raise ValueError(
        f"bits={bits}: {clients} clients' values plus noise of {TAIL_SIGMAS:g} standard deviations "
        f"(noise multiplier {sigma:.3g}) could wrap the 32-bit sum; use secagg-bits <= {fits}"
        if fits >= 1 else
        f"bits={bits}: the noise (multiplier {sigma:.3g}) cannot fit a 32-bit sum at any bit width"
    )
