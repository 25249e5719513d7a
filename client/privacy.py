"""A client's side of differential privacy (``dp`` config key; ``common.privacy``).

- ``dp record``: the client fine-tunes with DP-SGD and keeps its own
  **privacy ledger**: the DP-SGD steps it has taken on its rows in this run,
  with the noise multiplier and sampling rate of each.
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

from common.privacy.accounting import Mechanism, describe, epsilon
from common.privacy.dpsgd import DpSgdPlan, plan_for

if TYPE_CHECKING:
    from flwr.app import Context

    from common.config import FedTextConfig

log = logging.getLogger("fedtext.client")

LEDGER_FILE = "privacy-ledger"  # node config key of a deployed client's ledger file
STATE = "fedtext.dp-ledger"  # context.state: the steps taken in this run (JSON)


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


def history(context: Context, cfg: FedTextConfig, partition_id: int) -> list[Mechanism]:
    """The DP-SGD steps this client has taken in this run (or the run it resumes).

    One entry per (noise multiplier, sampling rate): a resumed run that plans
    more rounds calibrates a new sigma, and the steps taken at the old one
    still count at the old one.
    """
    if STATE in context.state.config_records:
        return _parse(str(context.state.config_records[STATE]["history"]))
    if not cfg.resume:
        return []
    # A resumed run continues the accounting of the run it resumes, from the
    # file that run left. Steps of a round lost to the interruption stay
    # counted: their update was sent, whether or not it was aggregated.
    run = _run_folder(cfg.resume)
    for path in (_ledger_file(context, cfg, partition_id), Path(run) / "privacy" / f"client-{partition_id}.json"):
        entry = _read(path).get(run)
        if entry:
            return _parse(json.dumps(entry["history"]))
    return []


def _parse(text: str) -> list[Mechanism]:
    return [Mechanism(float(sigma), float(rate), int(steps)) for sigma, rate, steps in json.loads(text)]


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def record_steps(context: Context, cfg: FedTextConfig, partition_id: int, past: list[Mechanism],
                 plan: DpSgdPlan, steps: int) -> list[Mechanism]:
    """Add ``steps`` steps of ``plan`` to the history; keep it in ``context.state`` and the ledger file."""
    from flwr.app import ConfigRecord

    now = plan.mechanism(steps)
    if past and (past[-1].sigma, past[-1].sample_rate) == (now.sigma, now.sample_rate):
        updated = [*past[:-1], plan.mechanism(past[-1].count + steps)]
    else:
        updated = [*past, now]
    text = json.dumps([[m.sigma, m.sample_rate, m.count] for m in updated])
    context.state[STATE] = ConfigRecord({"history": text})
    path = _ledger_file(context, cfg, partition_id)
    doc = _read(path)
    doc[str(Path(cfg.out))] = {"history": json.loads(text), "delta": cfg.dp_delta,
                               "epsilon": epsilon(updated, cfg.dp_delta, cfg.dp_accountant)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return updated


def record_level_round(context: Context, cfg: FedTextConfig, rows: int,
                       partition_id: int) -> tuple[DpSgdPlan, list[Mechanism]]:
    """The plan for this client's rows and its history; refuse a round over budget.

    Raises
    ------
    BudgetSpent
        When the round's planned steps would take epsilon past ``dp-epsilon``.
    """
    plan = plan_for(rows, cfg)
    past = history(context, cfg, partition_id)
    after = epsilon([*past, plan.mechanism(plan.steps_per_round)], cfg.dp_delta, cfg.dp_accountant)
    # calibrate() stops within its tolerance on the private side; allow the
    # accountant's own rounding on the last planned round.
    if after > cfg.dp_epsilon * (1 + 1e-6):
        taken = sum(m.count for m in past)
        raise BudgetSpent(
            f"privacy budget spent: this round's {plan.steps_per_round} DP-SGD steps would take "
            f"epsilon to {after:.3f} > dp-epsilon {cfg.dp_epsilon:g} ({taken} steps taken); not trained"
        )
    return plan, past


def record_level_metrics(plan: DpSgdPlan, spent_so_far: list[Mechanism], cfg: FedTextConfig) -> dict[str, float]:
    """What the reply says about this client's privacy after the steps of ``spent_so_far``."""
    eps = epsilon(spent_so_far, cfg.dp_delta, cfg.dp_accountant)
    log.info("record-level DP: %s after %d steps (noise multiplier %.3f, q %.4f)",
             describe(eps, cfg.dp_delta), sum(m.count for m in spent_so_far), plan.noise_multiplier,
             plan.sample_rate)
    return {"dp-epsilon": eps, "dp-noise-multiplier": plan.noise_multiplier}
