"""A client's side of differential privacy (``dp`` config key; ``common.privacy``).

- ``dp record``: the client fine-tunes with DP-SGD and keeps its own
  **privacy ledger**: the DP-SGD steps it has taken on its rows in this run.
  Before a round it checks that the round's steps fit in ``dp-epsilon``; a
  round that would not is refused (:class:`BudgetSpent`, which the server
  records as that client's problem), and the model is not trained. The
  ledger lives in ``context.state`` for the run and in a file for a resumed
  run to continue from: the run folder's ``privacy/`` in a simulation, the
  node config's ``privacy-ledger`` (``fedtext client`` puts it in the node's
  home) in a deployment.
- ``dp client``: the client clips its whole update to ``dp-clip`` and counts
  as one (weight 1); its share of the noise is added under the SecAgg mask
  (``client/secagg_mod.py``) or, with ``--no-secagg``, by the server.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.privacy.accounting import describe
from common.privacy.dpsgd import DpSgdPlan, plan_for, spent

if TYPE_CHECKING:
    from flwr.app import Context

    from common.config import FedTextConfig

log = logging.getLogger("fedtext.client")

LEDGER_FILE = "privacy-ledger"  # node config key of a deployed client's ledger file
STATE = "fedtext.dp-ledger"  # context.state: steps taken in this run


class BudgetSpent(RuntimeError):
    """A round's DP-SGD steps would take this client past its epsilon."""


def _ledger_file(context: Context, cfg: FedTextConfig, partition_id: int) -> Path:
    node_file = context.node_config.get(LEDGER_FILE)
    if node_file:
        return Path(str(node_file))
    return Path(cfg.out) / "privacy" / f"client-{partition_id}.json"


def _run_folder(path: str) -> str:
    """The run folder a ``resume`` value names (it may name the checkpoint folder)."""
    p = Path(path)
    return str(p.parent if p.name == "checkpoint" else p)


def steps_taken(context: Context, cfg: FedTextConfig, partition_id: int) -> int:
    """DP-SGD steps this client has taken in this run (or the run it resumes)."""
    if STATE in context.state.config_records:
        return int(context.state.config_records[STATE]["steps"])
    if not cfg.resume:
        return 0
    # A resumed run continues the accounting of the run it resumes, from the
    # file that run left. Steps of a round lost to the interruption stay
    # counted: their update was sent, whether or not it was aggregated.
    for path in (_ledger_file(context, cfg, partition_id),
                 Path(_run_folder(cfg.resume)) / "privacy" / f"client-{partition_id}.json"):
        entry = _read(path).get(_run_folder(cfg.resume))
        if entry:
            return int(entry["steps"])
    return 0


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def record_steps(context: Context, cfg: FedTextConfig, partition_id: int, plan: DpSgdPlan,
                 steps: int) -> None:
    """Store the run's step count in ``context.state`` and the ledger file."""
    from flwr.app import ConfigRecord

    context.state[STATE] = ConfigRecord({"steps": steps})
    path = _ledger_file(context, cfg, partition_id)
    doc = _read(path)
    doc[str(Path(cfg.out))] = {"steps": steps, "sample_rate": plan.sample_rate,
                               "noise_multiplier": plan.noise_multiplier, "delta": cfg.dp_delta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def record_level_round(context: Context, cfg: FedTextConfig, rows: int,
                       partition_id: int) -> tuple[DpSgdPlan, int]:
    """The plan for this client's rows and its steps so far; refuse a round over budget.

    Raises
    ------
    BudgetSpent
        When the round's planned steps would take epsilon past ``dp-epsilon``.
    """
    plan = plan_for(rows, cfg)
    before = steps_taken(context, cfg, partition_id)
    after = spent(plan, before + plan.steps_per_round, cfg.dp_delta, cfg.dp_accountant)
    # calibrate() stops within 1e-4 of sigma on the private side; allow the
    # accountant's own rounding on the last planned round.
    if after > cfg.dp_epsilon * (1 + 1e-6):
        raise BudgetSpent(
            f"privacy budget spent: this round's {plan.steps_per_round} DP-SGD steps would take "
            f"epsilon to {after:.3f} > dp-epsilon {cfg.dp_epsilon:g} ({before} steps taken); not trained"
        )
    return plan, before


def record_level_metrics(plan: DpSgdPlan, steps: int, cfg: FedTextConfig) -> dict[str, float]:
    """What the reply says about this client's privacy after ``steps`` steps in all."""
    eps = spent(plan, steps, cfg.dp_delta, cfg.dp_accountant)
    log.info("record-level DP: %s after %d steps (noise multiplier %.3f, q %.4f)",
             describe(eps, cfg.dp_delta), steps, plan.noise_multiplier, plan.sample_rate)
    return {"dp-epsilon": eps, "dp-noise-multiplier": plan.noise_multiplier}
