"""The ServerApp's side of a tuning study: federations one after another, as the tuner hands them over.

``fedtext tune`` submits one run whose ``trial-queue`` names a folder
(``common.trial_queue``). :func:`serve_trials` then loops:

1. wait for the next trial (its config keys and run folder);
2. run it as an ordinary federation (``server.rounds.run_federation``) on
   the run config with the trial's keys over it, the test set left alone;
   clients get the same keys in each instruction (``trial-config``);
3. after each round, wait for the tuner's verdict: go on, or stop (pruned);
4. say how the trial ended, and take the next one, until the tuner closes
   the queue.

Every trial reuses this process, its Ray actors and their cached data: a trial
costs its rounds, not a start-up.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flwr.serverapp import Grid

from common.config import FedTextConfig
from common.model import MODEL_FIELDS
from common.trial_queue import QueueClosed, TrialQueue
from server.global_model import GlobalModel
from server.rounds import run_federation

log = logging.getLogger("fedtext.server")
WAIT_S = 3600.0  # the tuner answers in a fraction of a second; this only ends an orphaned run


class _Pruned(Exception):
    pass


class _ModelCache:
    """The server's global model, built once per distinct model and reset to its initial weights."""

    def __init__(self) -> None:
        self._key: FedTextConfig | None = None
        self._model: GlobalModel | None = None
        self._initial: Any = None

    def get(self, cfg: FedTextConfig) -> GlobalModel:
        from common.splits import server_test_set

        key = cfg.only(*MODEL_FIELDS)
        if key != self._key:
            self._model = self._initial = None  # one model at a time in memory
            self._model = GlobalModel(cfg, server_test_set(cfg).label_names)
            self._key, self._initial = key, self._model.arrays()
        self._model.load(self._initial)
        self._model.cfg = cfg  # evaluation batch and length, the saved card: this trial's
        return self._model


def serve_trials(grid: Grid, cfg: FedTextConfig) -> int:
    """Run the queued trials; return how many ran."""
    queue = TrialQueue(cfg.trial_queue)
    models = _ModelCache()
    last, ran = -1, 0
    while True:
        try:
            request = queue.next_trial(last, WAIT_S)
        except QueueClosed:
            return ran
        last, ran = request["number"], ran + 1
        params = request["params"]
        try:
            trial_cfg = cfg.with_trial(params).replace(out=request["out"], central_eval=False, trial_queue="")
        except Exception as exc:  # noqa: BLE001 - a bad trial costs the trial, not the study
            queue.done(last, f"failed: {exc}")
            continue
        log.info("trial %d: %s", last, params)

        def verdict(entry: dict[str, Any], number: int = last) -> None:
            if entry["round"] >= 1 and not queue.wait_verdict(number, entry["round"], WAIT_S):
                raise _Pruned

        try:
            run_federation(grid, trial_cfg, trial=params, on_round=verdict, model=models.get(trial_cfg))
        except _Pruned:
            queue.done(last, "pruned")
        except QueueClosed:
            queue.done(last, "failed: the tuner went away")
            return ran
        except Exception as exc:  # noqa: BLE001
            log.error("trial %d failed:\n%s", last, traceback.format_exc())
            queue.done(last, f"failed: {type(exc).__name__}: {exc}")
        else:
            queue.done(last, "completed")
