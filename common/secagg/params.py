"""Protocol parameters of SecAgg+ and their validation.

Both sides build the same :class:`SecAggParams` (in fedtext from the run
config); the server also sends them in the stage-0 request so that a client
constructed without parameters can adopt them, and a client constructed with
parameters refuses a server that uses different ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

#: Masked vectors are summed modulo 2**32 (uint32 wraparound).
MODULUS_BITS = 32
MODULUS = 1 << MODULUS_BITS


def _is_int(value: Any) -> bool:
    # bool is a subclass of int, but True/False as a threshold is a bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class SecAggParams:
    """Parameters of one SecAgg+ round.

    Parameters
    ----------
    num_neighbours : int
        k, the number of neighbours each client masks with and shares its
        secrets among. Odd k is rounded up to the next even number so that the
        neighbour graph is regular (see :mod:`.graph`); k >= n-1 gives classic
        SecAgg (complete graph).
    threshold : int or float
        Shamir threshold t. Each client splits its secrets among its d
        neighbours and itself (d + 1 holders, as U1 includes u in Bonawitz
        et al.), so its self-mask can be rebuilt while only t - 1 neighbours
        survive. An ``int`` is an absolute t with 2 <= t <= k + 1 and
        2t > k + 1; a ``float`` in (0.5, 1] is a fraction of the d + 1
        holders (t = ceil(threshold * (d + 1))). Either way t is raised at run
        time to a strict majority of the holders, so that an honest client,
        which reveals at most one of the two shares it holds for a peer (and
        of its own only the self-mask share), can never help a server to
        collect t shares of both secrets of that peer. See
        :meth:`threshold_for_degree`.
    clip : float
        Every element of an update is clipped to [-clip, clip] before
        quantization.
    bits : int
        Quantization levels are 0 .. 2**bits - 1 (1 <= bits <= 31).
    max_weight : int
        Client weights (numbers of examples) are capped at this value; it also
        scales the weighting factor a_i = min(n_i, max_weight) / max_weight.
    stage_timeout_s : float
        How long the server waits for the replies of one stage; clients that
        miss it are treated as dropped. Not used by this library itself, it is
        carried for the transport layer that waits.
    """

    num_neighbours: int = 8
    threshold: int | float = 0.6
    clip: float = 1.0
    bits: int = 22
    max_weight: int = 10_000
    stage_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        self._validate_ranges()

    # ------------------------------------------------------------------ checks
    def _validate_ranges(self) -> None:
        if not _is_int(self.num_neighbours) or self.num_neighbours < 2:
            raise ValueError(f"num_neighbours must be an int >= 2, got {self.num_neighbours!r}")
        self._validate_threshold()
        if not _is_real(self.clip) or self.clip <= 0:
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not _is_int(self.bits) or not 1 <= self.bits <= 31:
            raise ValueError(f"bits must be an int in [1, 31], got {self.bits!r}")
        if not _is_int(self.max_weight) or self.max_weight < 1:
            raise ValueError(f"max_weight must be an int >= 1, got {self.max_weight!r}")
        if not _is_real(self.stage_timeout_s) or self.stage_timeout_s <= 0:
            raise ValueError(
                f"stage_timeout_s must be a finite number > 0, got {self.stage_timeout_s!r}"
            )

    def _validate_threshold(self) -> None:
        t, holders = self.threshold, self.num_neighbours + 1
        if _is_int(t):
            if not 2 <= t <= holders:
                raise ValueError(f"threshold must satisfy 2 <= threshold <= num_neighbours+1={holders}, got {t}")
            if 2 * t <= holders:
                raise ValueError(
                    f"threshold={t} must exceed (num_neighbours+1)/2={holders / 2} "
                    "(else a server could collect both shares of a peer)"
                )
        elif isinstance(t, float):
            if not (math.isfinite(t) and 0.5 < t <= 1.0):
                raise ValueError(f"threshold as a fraction must be in (0.5, 1], got {t}")
        else:
            raise ValueError(f"threshold must be an int or a float fraction, got {t!r}")

    def validate(self, num_clients: int) -> None:
        """Check that the modular sum of ``num_clients`` encodings cannot overflow.

        Raises
        ------
        ValueError
            One line naming the offending parameter.
        """
        if not _is_int(num_clients) or num_clients < 1:
            raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}")
        levels = (1 << self.bits) - 1
        if num_clients * levels >= MODULUS:
            raise ValueError(
                f"bits={self.bits} too large for {num_clients} clients: "
                f"{num_clients} * (2**{self.bits} - 1) >= 2**32 would overflow the sum"
            )
        if num_clients * self.max_weight >= MODULUS:
            raise ValueError(
                f"max_weight={self.max_weight} too large for {num_clients} clients: "
                f"{num_clients} * {self.max_weight} >= 2**32 would overflow the sum"
            )

    # ------------------------------------------------------------- derived
    @property
    def levels(self) -> int:
        """L = 2**bits - 1, the largest quantized value."""
        return (1 << self.bits) - 1

    def threshold_for_degree(self, degree: int) -> int:
        """Shamir threshold t for a neighbour graph of the given degree.

        The shares go to ``degree + 1`` holders (the neighbours and the client
        itself). The result always satisfies 2 <= t and 2t > degree + 1; it
        may exceed ``degree + 1`` when the graph is too small, which the
        caller reports as "not enough survivors".
        """
        holders = degree + 1
        if _is_int(self.threshold):
            wanted = int(self.threshold)
        else:
            wanted = math.ceil(float(self.threshold) * holders)
        return max(2, wanted, holders // 2 + 1)

    # ------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, int | float]:
        """Plain-data form (field name -> value) used in messages and state."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SecAggParams":
        """Inverse of :meth:`to_dict`; validates the values."""
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"missing SecAgg parameters: {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})
