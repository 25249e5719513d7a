"""The ``fedtext`` command line.

=================  ===========================================================
``simulate``       a federation of N clients on this machine (Ray)
``centralized``    the same training on the union of the clients' data
``certs``          CA, server certificate and client keys for a deployment
                   (``deploy.certs``)
=================  ===========================================================

Each subcommand's flags are the config keys it uses (``common.config``); a bad
flag or file ends with ``fedtext: error: <one line>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from common.config import FedTextConfig, add_config_arguments, config_from_args
from common.errors import FedTextError

# The keys that describe a training run (not the federation or its deployment).
TRAINING_KEYS = [
    "model", "num-hidden-layers", "freeze", "lora-r", "lora-alpha", "lora-dropout", "max-length",
    "data", "test-data", "text-column", "label-column", "labels", "max-examples",
    "max-test-examples", "test-fraction", "client-eval-fraction", "clients", "partition",
    "batch-size", "local-epochs", "local-steps", "lr", "weight-decay", "warmup-ratio",
    "max-grad-norm", "grad-accum-steps", "proximal-mu", "rounds", "seed", "out",
]
FEDERATION_KEYS = [
    "strategy", "server-lr", "server-momentum", "fraction-train", "fraction-evaluate",
    "min-clients", "round-timeout", "client-cpus", "client-gpus",
    "secagg", "secagg-neighbours", "secagg-threshold", "secagg-clip", "secagg-bits",
    "secagg-max-weight", "secagg-timeout",
]


def _offline_env() -> None:
    # Nothing is fetched from the hub; fail fast instead of retrying downloads.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    return simulate(config_from_args(args))


def cmd_centralized(args: argparse.Namespace) -> int:
    from simulations.centralized import centralized

    return centralized(config_from_args(args))


# Subcommands owned by other packages: each module exposes
# add_arguments(parser) and run(args) -> int, imported only when used.
MODULE_COMMANDS = [
    ("certs", "create a CA, a server certificate and client keys", "deploy.certs"),
    ("server", "run the coordinating SuperLink of a deployment (TLS, node auth)", "server.launch"),
    ("client", "join a deployment as a data-holding SuperNode", "client.launch"),
]


def _module_command(module: str) -> Callable[[argparse.Namespace], int]:
    return lambda args: int(importlib.import_module(module).run(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtext",
        description="Federated fine-tuning of pretrained transformers for text classification.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, list[str], Callable[[argparse.Namespace], int]]] = [
        ("simulate", "run a federation of N clients on this machine (Flower + Ray)",
         TRAINING_KEYS + FEDERATION_KEYS, cmd_simulate),
        ("centralized", "train on the union of the clients' data (the baseline)",
         TRAINING_KEYS, cmd_centralized),
    ]
    for name, help_text, keys, handler in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(p, keys)
        p.set_defaults(handler=handler)
    for name, help_text, module in MODULE_COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(handler=_module_command(module))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedtext`` console script."""
    _offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except FedTextError as exc:
        print(f"fedtext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedtext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
