"""``fedtext simulate``: a whole federation on this machine, on Flower's Ray engine.

1. check the data once, here, so a bad file fails in a second with one line
   instead of inside N Ray workers; with ``--resume``, check the checkpoint too;
   partition it once and save each client's share in the run folder
   (``common.splits``), so that no client loads the whole file. These checks
   import torch, transformers and datasets: they run in a child process
   (:func:`preflight`), so that this process, which then only follows the
   run, does not hold those imports' half a gigabyte for the whole run;
2. write the run config (every key, absolute paths) into the run folder;
3. start a private SuperLink in simulation mode (``server.superlink``) and
   submit the app with ``num-supernodes = clients``;
4. print each round as the ServerApp records it in ``metrics.json``;
5. exit 0 only if the run's status is ``finished:completed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common.config import FedTextConfig, absolute_paths, sampled_by_fraction
from common.errors import ConfigError, FedTextError
from common.processes import in_fresh_process, stop_process_group
from common.recipe import peak_lr
from server.superlink import LocalSuperLink, echo_rounds, follow_run, report_run, write_run_config
from simulations.ray_cluster import check_ray_address

if TYPE_CHECKING:
    import datasets


def prepare_config(cfg: FedTextConfig) -> FedTextConfig:
    """The run's config as the apps will see it: absolute paths, all clients sampled."""
    return absolute_paths(cfg).replace(min_clients=min(cfg.min_clients, cfg.clients))


def check_sampling(cfg: FedTextConfig) -> None:
    """A round must sample enough clients: Flower would silently sample more than asked."""
    sampled = sampled_by_fraction(cfg)
    need = max(cfg.min_clients, 3 if cfg.secagg else 1)
    if sampled < need:
        why = "min-clients" + (" and secure aggregation" if cfg.secagg else "")
        raise ConfigError(
            f"config key 'fraction-train': {cfg.fraction_train:g} of {cfg.clients} clients samples {sampled} "
            f"a round; {why} need at least {need} (fraction-train >= {need / cfg.clients:.3g})"
        )


def check_resume(cfg: FedTextConfig) -> None:
    """Verify the checkpoint here, before any process starts (the ServerApp checks again)."""
    if cfg.resume:
        from server.checkpoint import load_for_resume

        load_for_resume(cfg)


def check_data(cfg: FedTextConfig) -> tuple[list[str], list[datasets.Dataset]]:
    """Load the server's test set and partition the rest once; return the labels and every client's share."""
    from common.partition import load_partitions
    from common.splits import server_test_set_and_pool

    test, pool = server_test_set_and_pool(cfg)
    shares = load_partitions(pool.dataset, cfg.partition, cfg.clients, cfg.seed)
    for pid, share in enumerate(shares):
        if len(share) < 2:
            raise FedTextError(
                f"partition '{cfg.partition}': client {pid} gets {len(share)} row(s); "
                "use fewer clients or more data"
            )
    return test.label_names, shares


def preflight(cfg: FedTextConfig) -> tuple[list[str], str]:
    """Every check that needs the model or the data; then each client's share, written to the run folder.

    Returns
    -------
    tuple[list[str], str]
        The label names and the model's one-line description (``common.model.check_model``).
    """
    from common.model import check_model
    from common.splits import split_share, write_client_shares

    check_resume(cfg)
    # The model against its freezing policy first: it takes a tenth of a second
    # (the DP checks need the clients' rows, below).
    check_model(cfg.replace(dp="none"))
    labels, shares = check_data(cfg)
    rows = [len(split_share(cfg, share, pid)[0]) for pid, share in enumerate(shares)] if cfg.dp == "record" else []
    model = check_model(cfg, len(labels), rows)
    write_client_shares(cfg, shares, labels)  # each client then reads its own rows only
    return labels, model


def simulate(cfg: FedTextConfig, echo=print, ray_address: str = "local") -> int:  # noqa: ANN001
    """Run the federation; return the process exit code.

    ``ray_address``: ``local`` starts a private Ray for the run; ``HOST:PORT``
    runs the clients on that running Ray cluster.
    """
    ray_address = check_ray_address(ray_address)
    cfg = prepare_config(cfg)
    check_sampling(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    labels, model = in_fresh_process(preflight, cfg)
    echo(f"fedtext simulate: {cfg.clients} clients, partition {cfg.partition}, {cfg.rounds} rounds, "
         f"strategy {cfg.strategy}, labels {', '.join(labels)}")
    echo(f"model {cfg.model}: {model}; lr {peak_lr(cfg):g} ({cfg.lr_schedule} over the run)")
    run_config = write_run_config(cfg, out / "run_config.toml")
    # Flower's simulation runtime calls ray.init(), which reads RAY_ADDRESS.
    superlink = LocalSuperLink(home=out / ".flwr", simulation=True, env_extra={"RAY_ADDRESS": ray_address})
    metrics = out / "metrics.json"
    metrics.unlink(missing_ok=True)
    logs = None
    grace = 10.0
    try:
        superlink.start()
        run_id = superlink.submit(
            run_config,
            {
                "num-supernodes": cfg.clients,
                "client-resources-num-cpus": cfg.client_cpus,
                "client-resources-num-gpus": cfg.client_gpus,
            },
        )
        echo(f"run {run_id} submitted; logs: {out / 'run.log'}")
        logs = superlink.stream_logs(run_id, out / "run.log")
        status, details = follow_run(superlink, run_id, metrics, echo_rounds(echo, cfg.rounds))
        grace = 1.0  # the run is over and recorded: nothing left to end gracefully
    finally:
        if logs is not None:
            stop_process_group(logs, grace=2.0)
        superlink.stop(grace)
    return report_run(status, details, out, echo, "fedtext simulate")
