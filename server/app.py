"""The fedtext ServerApp: Flower runs ``main`` once per run, on the SuperLink side."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, then run the federation (``server.rounds``)."""
    from common.config import FedTextConfig
    from server.outputs import RunRecorder
    from server.rounds import run_federation
    from server.trials import serve_trials

    cfg = FedTextConfig.from_mapping(context.run_config)
    setup_logging(Path(cfg.out) / "server.log")
    status = "failed"
    try:
        if cfg.trial_queue:  # a tuning study: its trials, one federation after another
            serve_trials(grid, cfg)
        else:
            run_federation(grid, cfg)
        status = "completed"
    except Exception as exc:
        # Leave the reason in the run folder: `flwr run` does not report it.
        RunRecorder.mark_failed(cfg.out, f"{type(exc).__name__}: {exc}")
        logging.getLogger("fedtext.server").error("run failed:\n%s", traceback.format_exc())
        raise
    finally:
        told = tell_clients_run_ended(grid, status)
        if not cfg.trial_queue:
            RunRecorder.mark_told(cfg.out, told)


def tell_clients_run_ended(grid: Grid, status: str) -> int:
    """``server.rounds.announce_end``, best effort: a failure to tell must not hide the run's outcome.

    Returns the number of clients that acknowledged.
    """
    from server.rounds import announce_end

    try:
        return announce_end(grid, status)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("fedtext.server").warning("could not tell the clients the run is over: %s", exc)
        return 0


def setup_logging(logfile: Path) -> None:
    """fedtext's log lines to stderr (streamed by ``flwr run --stream``) and to a file."""
    logger = logging.getLogger("fedtext")
    if logger.handlers:
        return
    logfile.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(logfile)):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
