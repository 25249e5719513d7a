"""The ``fedtext`` command line.

=================  ===========================================================
``simulate``       a federation of N clients on this machine (Ray)
``centralized``    the same training on the union of the clients' data
``tune``           a hyperparameter search over simulations (Optuna)
``certs``          CA, server certificate and client keys for a deployment
                   (``deploy.certs``)
``server``         coordinate a real federation (``server.launch``)
``client``         join one with local data (``client.launch``)
``evaluate``       metrics of a saved model on a labeled file
``predict``        label and score per text (JSON lines)
``serve``          a TEI-compatible HTTP endpoint with dynamic batching (``serve``)
``export``         ONNX (and int8) export checked against PyTorch (``serve.export``)
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

from common.config import FedTextConfig, add_config_arguments, config_from_args, given_keys
from common.errors import FedTextError
from common.processes import offline_environment

TRAINING_KEYS = FedTextConfig.keys("training")  # describe a fine-tuning run
FEDERATION_KEYS = FedTextConfig.keys("federation")  # how clients are coordinated


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    values = given_keys(args, echo=print)
    if values.get("resume"):
        from server.checkpoint import resumed_config

        return simulate(resumed_config(values), ray_address=args.ray_address)
    return simulate(FedTextConfig.from_mapping(values), ray_address=args.ray_address)


def cmd_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simulations.tuning.study import TuneOptions, tune

    cfg = config_from_args(args, echo=print)
    options = TuneOptions(
        out=Path(args.out or "runs/tune"), trials=args.trials, storage=args.storage or "",
        study_name=args.study_name, sampler=args.sampler, pruner=args.pruner, objective=args.objective,
        centralized=args.centralized, seed=cfg.seed, params=args.param or [], space_file=args.space,
    )
    return tune(cfg, options)


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    """The search's own flags (the config flags give each trial's base)."""
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=20,
                   help="Finished (completed or pruned) trials the study should hold (default: 20).")
    g.add_argument("--param", action="append", metavar="KEY=SPEC",
                   help="A config key to search: KEY=LOW..HIGH, KEY=LOW..HIGH:log, KEY=LOW..HIGH:step=S "
                        "or KEY=A,B,C. Repeatable. Default space: lr (log, around the freezing "
                        "policy's default), batch-size 8|16|32, local-epochs 0.5|1|2.")
    g.add_argument("--space", metavar="FILE", help="TOML search space: one table per key "
                   "(low/high/log/step or choices).")
    g.add_argument("--objective", default="accuracy", help="accuracy | f1_macro | loss, on the clients' "
                   "held-out rows after each round (never the test set; default: accuracy).")
    g.add_argument("--sampler", default="tpe", help="tpe (seeded) | random | grid (default: tpe).")
    g.add_argument("--pruner", default="median",
                   help="median | hyperband | halving | threshold:VALUE | none: stops weak trials after a "
                        "round; threshold stops any trial worse than VALUE (default: median).")
    g.add_argument("--centralized", action="store_true",
                   help="Trials are centralized runs: the baseline, tuned with the same budget.")
    g.add_argument("--storage", metavar="FILE", help="SQLite file of the study (default: OUT/study.db); "
                   "a killed study resumes from it, and optuna-dashboard opens it.")
    g.add_argument("--study-name", default="fedtext", help="Name of the study in the storage (default: fedtext).")


def cmd_centralized(args: argparse.Namespace) -> int:
    from simulations.centralized import centralized

    return centralized(config_from_args(args, echo=print))


# Subcommands owned by other packages: each module exposes
# add_arguments(parser) and run(args) -> int, imported only when used.
MODULE_COMMANDS = [
    ("certs", "create a CA, a server certificate and client keys", "deploy.certs"),
    ("server", "run the coordinating SuperLink of a deployment (TLS, node auth)", "server.launch"),
    ("client", "join a deployment as a data-holding SuperNode", "client.launch"),
]


def _module_command(module: str) -> Callable[[argparse.Namespace], int]:
    return _module_function(module, "run")


def _module_function(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    return lambda args: int(getattr(importlib.import_module(module), name)(args))


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from common.inference import evaluate_saved_model
    from common.metrics import summary
    from common.plots import plot_confusion

    metrics = evaluate_saved_model(args.model, args.data, args.text_column, args.label_column,
                                   args.max_length, args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(metrics, indent=1) + "\n")
    plot_confusion(metrics["confusion_matrix"], metrics["labels"], out / "confusion.png", f"{args.data}")
    head = summary(metrics, ("accuracy", "precision_macro", "recall_macro", "f1_macro", "loss"))
    print(" ".join(f"{k} {v:.4f}" for k, v in head.items()) + f" | {metrics['num_examples']} rows")
    for name, row in metrics["per_class"].items():
        print(f"  {name:>20}: precision {row['precision']:.4f} recall {row['recall']:.4f} "
              f"f1 {row['f1']:.4f} support {row['support']}")
    print(f"wrote {out / 'evaluation.json'} and {out / 'confusion.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from common.errors import ConfigError
    from common.inference import predict, read_texts

    if bool(args.texts) == bool(args.file):
        raise ConfigError("predict: give TEXT arguments or --file FILE (one of the two)")
    texts = args.texts or read_texts(args.file, args.text_column)
    lines = [json.dumps(row, ensure_ascii=False) for row in predict(args.model, texts, args.max_length)]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    return 0


def _add_model_use_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="A saved model folder (a run's OUT/model).")
    p.add_argument("--text-column", default="text", help="Column holding the text (default: text).")
    p.add_argument("--max-length", type=int, default=None,
                   help="Tokens kept per text (default: the length the model was trained at, else 128).")
    p.add_argument("--batch-size", type=int, default=32, help="Texts per forward pass (default: 32).")


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
        if name == "simulate":
            p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS", "local"), metavar="HOST:PORT",
                           help="Run the clients on this existing Ray cluster (its head's GCS address; "
                                "default: $RAY_ADDRESS, else a private Ray started for the run).")
    p = sub.add_parser("tune", help="search hyperparameters over federated simulations (Optuna)",
                       description="Search hyperparameters with Optuna: each trial is a federated "
                       "simulation (or, with --centralized, a centralized run) built from the config "
                       "flags plus the trial's parameters; --out is the study folder.")
    add_config_arguments(p, TRAINING_KEYS + FEDERATION_KEYS)
    add_tune_arguments(p)
    p.set_defaults(handler=cmd_tune)
    p = sub.add_parser("evaluate", help="metrics of a saved model on a labeled file",
                       description="Accuracy, precision/recall/F1 (macro and per class) and the "
                       "confusion matrix of a saved model on a labeled file.")
    _add_model_use_arguments(p)
    p.add_argument("--data", required=True, help="Labeled file (CSV, TSV, JSONL, parquet, datasets folder).")
    p.add_argument("--label-column", default="label", help="Column holding the label (default: label).")
    p.add_argument("--out", default="runs/evaluation", help="Folder for evaluation.json and confusion.png.")
    p.set_defaults(handler=cmd_evaluate)
    p = sub.add_parser("predict", help="label and score per text, as JSON lines",
                       description="Classify texts with a saved model; one JSON line per text.")
    _add_model_use_arguments(p)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="Texts to classify.")
    p.add_argument("--file", help="Classify the lines of a .txt file, or --text-column of a table.")
    p.add_argument("--out", help="Write the JSON lines here instead of standard output.")
    p.set_defaults(handler=cmd_predict)
    p = sub.add_parser("serve", help="serve a saved model over HTTP (TEI-compatible /predict)",
                       description="Serve a saved or exported model: POST /predict (TEI's shapes) with "
                       "dynamic batching, GET /health, /info, /metrics (Prometheus).")
    from serve.cli import add_export_arguments, add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(handler=_module_function("serve.cli", "run_serve"))
    p = sub.add_parser("export", help="export a saved model to ONNX (optionally int8), checked against PyTorch",
                       description="Export a saved model to ONNX Runtime, optionally with an int8 "
                       "dynamically quantized graph; compares labels and scores with PyTorch.")
    add_export_arguments(p)
    p.set_defaults(handler=_module_function("serve.cli", "run_export"))
    for name, help_text, module in MODULE_COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(handler=_module_command(module))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedtext`` console script."""
    from common.processes import install_signal_handlers

    offline_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (a scheduler, `kill`, a benchmark driver) ends a command like Ctrl-C,
    # so the finally blocks stop the SuperLink, Ray and everything else it started.
    install_signal_handlers()
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
