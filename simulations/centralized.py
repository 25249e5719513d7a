"""``fedtext centralized``: the baseline every federated figure is compared with.

The same model, the same training code (``common.training``) and the same rows
as a ``fedtext simulate`` run with the same flags: the union of what the
simulated clients train on, evaluated on the same server test set. One
"round" here is ``local-epochs`` over the union, so R rounds take as many
optimizer steps over the same examples as R federated rounds do in total.
"""

from __future__ import annotations

import time

from common.config import FedTextConfig
from common.model import pick_device
from common.data import LabeledData
from common.recipe import round_span
from common.splits import client_share, server_test_set_and_pool
from server.global_model import GlobalModel
from server.outputs import RunRecorder, progress_line
from simulations.simulate import prepare_config


def union_of_client_rows(cfg: FedTextConfig, pool: LabeledData):  # noqa: ANN201
    """The rows the simulated clients would train on, concatenated."""
    import datasets

    shares = [client_share(cfg, pool, pid, cfg.clients)[0] for pid in range(cfg.clients)]
    return datasets.concatenate_datasets(shares)


def centralized(cfg: FedTextConfig, echo=print) -> int:  # noqa: ANN001
    """Train on the union, evaluate after every round; write the run folder."""
    from common.training import train_model

    cfg = prepare_config(cfg)
    test, pool = server_test_set_and_pool(cfg)
    rows = union_of_client_rows(cfg, pool)
    model = GlobalModel(cfg, test.label_names)
    echo(f"fedtext centralized: {len(rows)} training rows, {len(test)} test rows; {model.describe()}")
    recorder = RunRecorder(cfg.out, cfg.to_mapping(), {"labels": test.label_names, "model": model.sizes(),
                                                       "mode": "centralized"})
    recorder.record_round(0, model.evaluate(test), clients={})
    echo(progress_line(recorder.doc["rounds"][-1], cfg.rounds))
    for r in range(1, cfg.rounds + 1):
        started = time.perf_counter()
        result = train_model(model.model, rows, model.tokenizer, cfg, pick_device(), seed=cfg.seed + 1000 * r,
                             span=round_span(r, cfg.rounds, cfg.lr_schedule))
        recorder.record_round(r, model.evaluate(test), clients={"train": {"train-loss": result.loss}},
                              seconds=time.perf_counter() - started, train_steps=result.steps)
        echo(progress_line(recorder.doc["rounds"][-1], cfg.rounds))
    model.save(recorder.out / "model")
    recorder.finish("completed")
    final = recorder.doc["rounds"][-1]["central"]
    echo(f"done: central accuracy {final['accuracy']:.4f}, macro F1 {final['f1_macro']:.4f}; "
         f"model in {recorder.out / 'model'}")
    return 0
