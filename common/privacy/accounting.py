"""Privacy accounting with Google's ``dp-accounting``: events in, (epsilon, delta) out.

Both modes describe what they did as DP events and let one accountant compose them:

- record-level, per client: every DP-SGD step is a Poisson-sampled Gaussian
  mechanism (sampling rate q = expected batch / rows, noise multiplier sigma),
  so T steps are ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), T)``;
- client-level, on the server: every round is a Gaussian mechanism on the sum
  of clipped updates, Poisson-sampled at q = fraction-train when not every
  client trains. (Flower samples a fixed number of clients; accounting it as
  Poisson sampling at the same rate is the usual approximation, stated in
  docs/PRIVACY.md.)

The RDP accountant (default) is the one Opacus, TF Privacy and Flower use; the
PLD accountant is tighter and slower. :func:`calibrate` finds the smallest noise
multiplier whose planned events stay within a target epsilon.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ACCOUNTANTS = ("rdp", "pld")
#: A noise multiplier above this leaves nothing to learn from: a target that
#: needs more is reported as unreachable for the planned rounds.
MAX_NOISE_MULTIPLIER = 100.0


@dataclass(frozen=True)
class Mechanism:
    """``count`` compositions of a Gaussian mechanism (noise multiplier ``sigma``),
    each on a Poisson sample at rate ``sample_rate`` (1 = no sampling)."""

    sigma: float
    sample_rate: float = 1.0
    count: int = 1

    def event(self):  # noqa: ANN201 - a dp_accounting.DpEvent
        import dp_accounting

        one = dp_accounting.GaussianDpEvent(self.sigma)
        if self.sample_rate < 1.0:
            one = dp_accounting.PoissonSampledDpEvent(self.sample_rate, one)
        return one if self.count == 1 else dp_accounting.SelfComposedDpEvent(one, self.count)


def fresh_accountant(kind: str = "rdp"):  # noqa: ANN201 - a dp_accounting.PrivacyAccountant
    """An empty accountant of the kind named by the ``dp-accountant`` key."""
    from dp_accounting import pld, rdp

    if kind == "rdp":
        # For small sigma some fractional orders do not converge; the accountant
        # leaves them out (the bound stays valid) and says so through absl, once
        # per order and call: thousands of lines during calibration.
        logging.getLogger("absl").setLevel(logging.ERROR)
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise ValueError(f"dp-accountant must be one of {', '.join(ACCOUNTANTS)}, got {kind!r}")


def epsilon(mechanisms: Iterable[Mechanism], delta: float, kind: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``mechanisms`` (0 for none)."""
    accountant = fresh_accountant(kind)
    composed = False
    for mechanism in mechanisms:
        if mechanism.count > 0:
            accountant.compose(mechanism.event())
            composed = True
    return float(accountant.get_epsilon(delta)) if composed else 0.0


def calibrate(
    plan: Callable[[float], list[Mechanism]], target_epsilon: float, delta: float, kind: str = "rdp"
) -> float:
    """The smallest noise multiplier sigma with ``epsilon(plan(sigma), delta) <= target_epsilon``.

    Raises
    ------
    ValueError
        When even sigma = :data:`MAX_NOISE_MULTIPLIER` exceeds the target.
    """
    import dp_accounting

    if epsilon(plan(MAX_NOISE_MULTIPLIER), delta, kind) > target_epsilon:
        raise ValueError(
            f"epsilon {target_epsilon:g} at delta {delta:g} is unreachable for the planned "
            f"training: it needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g}"
        )

    def make_event(sigma: float):  # noqa: ANN202
        return dp_accounting.ComposedDpEvent([m.event() for m in plan(sigma) if m.count > 0])

    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: fresh_accountant(kind), make_event, target_epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(1e-3, MAX_NOISE_MULTIPLIER),
        tol=1e-4,
    )
    # The search stops within tol of the boundary, on the private side of it.
    return float(sigma)


def describe(epsilon_value: float, delta: float) -> str:
    """``eps 3.21 (delta 1e-05)``, for progress lines."""
    shown = "inf" if math.isinf(epsilon_value) else f"{epsilon_value:.2f}"
    return f"eps {shown} (delta {delta:g})"
