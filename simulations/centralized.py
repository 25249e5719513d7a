"""``fedtext centralized``: the baseline every federated figure is compared with.

The same model, the same training code (``common.training``) and the same rows
as a ``fedtext simulate`` run with the same flags: the union of what the
simulated clients train on, evaluated on the same server test set. One
"round" here is ``local-epochs`` over the union, so R rounds take as many
optimizer steps over the same examples as R federated rounds do in total, on
the same learning-rate schedule over the run.

After every round it also evaluates the union of the rows the clients keep
aside (``client-eval-fraction``), exactly the rows a federation's clients
evaluate: a tuning study measures both kinds of run on them.

A round's ``seconds`` covers the same work as a federated round's: training,
the evaluation of the held-out rows and of the test set (``phases_s`` splits
it), so that the two round times compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.config import FedTextConfig
from common.data import LabeledData
from common.metrics import summary
from common.model import pick_device
from common.recipe import round_span
from common.splits import client_share, server_test_set_and_pool
from server.aggregation import TRAIN_PHASE, Laps
from server.global_model import GlobalModel
from server.outputs import RunRecorder, final_figures, progress_line
from simulations.simulate import prepare_config


def union_of_client_rows(cfg: FedTextConfig, pool: LabeledData):  # noqa: ANN201
    """(train, held-out) rows of all simulated clients, each concatenated."""
    import datasets

    shares = [client_share(cfg, pool, pid, cfg.clients) for pid in range(cfg.clients)]
    return (datasets.concatenate_datasets([train for train, _ in shares]),
            datasets.concatenate_datasets([held for _, held in shares]))


def centralized(cfg: FedTextConfig, echo=print,  # noqa: ANN001
                on_round: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Train on the union, evaluate after every round; write the run folder.

    ``on_round`` sees each recorded round (a tuning trial reports it, and may
    stop the run by raising).
    """
    from common.training import train_model

    cfg = prepare_config(cfg)
    test, pool = server_test_set_and_pool(cfg)
    rows, held_out = union_of_client_rows(cfg, pool)
    model = GlobalModel(cfg, test.label_names)
    echo(f"fedtext centralized: {len(rows)} training rows, {len(held_out)} held-out rows, "
         f"{len(test)} test rows; {model.describe()}")
    recorder = RunRecorder(cfg.out, cfg.to_mapping(), {"labels": test.label_names, "model": model.sizes(),
                                                       "mode": "centralized"})

    def record(r: int, laps: Laps, **extra: Any) -> None:
        clients: dict[str, Any] = {}
        if "train-loss" in extra:
            clients["train"] = {"train-loss": extra.pop("train-loss")}
        central = model.evaluate(test) if cfg.central_eval else {}
        laps.lap("central")
        if len(held_out):
            metrics = model.evaluate(LabeledData(held_out, test.label_names, test.source))
            clients["evaluate"] = {**summary(metrics), "num_examples": len(held_out)}
        laps.lap("evaluate")
        if r > 0:  # round 0 only evaluates the pretrained model, as a federation's does
            extra.update(seconds=sum(laps.phases.values()), phases_s=laps.phases)
        recorder.record_round(r, central, clients, **extra)
        entry = recorder.doc["rounds"][-1]
        echo(progress_line(entry, cfg.rounds))
        if on_round is not None:
            on_round(entry)

    record(0, Laps())
    for r in range(1, cfg.rounds + 1):
        laps = Laps()
        result = train_model(model.model, rows, model.tokenizer, cfg, pick_device(), seed=cfg.seed + 1000 * r,
                             span=round_span(r, cfg.rounds, cfg.lr_schedule))
        laps.lap(TRAIN_PHASE)
        record(r, laps, **{"train-loss": result.loss}, train_steps=result.steps)
    model.save(recorder.out / "model")
    recorder.finish("completed")
    echo(f"done: {final_figures(recorder.doc)}; model in {recorder.out / 'model'}")
    return 0
