"""Flags of ``fedtext serve`` and ``fedtext export`` (the work is in ``serve.app`` and ``serve.export``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import ConfigError


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="A saved model folder (a run's OUT/model) or an exported one (fedtext export).")
    p.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default: 127.0.0.1).")
    p.add_argument("--port", type=int, default=8080, help="Port (default: 8080).")
    p.add_argument("--max-length", type=int, default=None,
                   help="Tokens per text (default: the length the model was trained at, else 128).")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="A forward pass holds at most this many padded tokens (default: 8192).")
    g.add_argument("--max-batch-rows", type=int, default=64, help="...and at most this many texts (default: 64).")
    g.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="How long an open batch waits for more requests (default: 5).")
    g.add_argument("--max-queue", type=int, default=1024,
                   help="Texts waiting at most; past it requests get 503 + Retry-After (default: 1024).")
    g.add_argument("--max-client-batch-size", type=int, default=64,
                   help="Texts one request may send (default: 64).")


def serve_settings(args: argparse.Namespace):  # noqa: ANN201
    from serve.app import ServeSettings

    for flag, value, low in (("--port", args.port, 1), ("--max-batch-tokens", args.max_batch_tokens, 1),
                             ("--max-batch-rows", args.max_batch_rows, 1), ("--max-queue", args.max_queue, 1),
                             ("--max-client-batch-size", args.max_client_batch_size, 1)):
        if value < low:
            raise ConfigError(f"{flag}: expected >= {low}, got {value}")
    if args.port > 65535:
        raise ConfigError(f"--port: expected 1-65535, got {args.port}")
    if args.max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms: expected >= 0, got {args.max_wait_ms}")
    if args.max_length is not None and args.max_length < 8:
        raise ConfigError(f"--max-length: expected >= 8, got {args.max_length}")
    return ServeSettings(max_batch_tokens=args.max_batch_tokens, max_batch_rows=args.max_batch_rows,
                         max_wait_ms=args.max_wait_ms, max_queue_rows=args.max_queue,
                         max_client_batch_size=args.max_client_batch_size)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model, then serve until SIGTERM or Ctrl-C (in-flight requests finish)."""
    import uvicorn

    from common.inference import load_classifier
    from serve.app import create_app

    settings = serve_settings(args)
    classifier = load_classifier(args.model, args.max_length)
    app = create_app(classifier, settings)
    print(f"fedtext serve: {classifier.folder} ({classifier.backend}, {len(classifier.labels)} labels, "
          f"max length {classifier.max_length}) on http://{args.host}:{args.port}", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=30, access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn has already drained the requests in flight; it re-raises the
        # signal on its way out, which fedtext's handler turns into this.
        pass
    except OSError as exc:
        raise ConfigError(f"--port {args.port}: cannot listen on {args.host} ({exc.strerror or exc})") from exc
    print("fedtext serve: stopped", flush=True)
    return 0 if server.started else 1


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="A saved PyTorch model folder (a run's OUT/model).")
    p.add_argument("--out", required=True, help="Folder for model.onnx (and model.int8.onnx) and its files.")
    p.add_argument("--quantize", default="none", help="none | int8: add a dynamically quantized graph.")
    p.add_argument("--check-texts", default=None, metavar="FILE",
                   help="Texts to compare PyTorch and ONNX on (.txt lines or a table's text column; "
                        "default: 600 packaged reviews and news articles).")
    p.add_argument("--max-length", type=int, default=None, help="Tokens per text (default: as trained).")


def run_export(args: argparse.Namespace) -> int:
    from common.inference import read_texts
    from serve.export import export_model

    texts = read_texts(args.check_texts) if args.check_texts else None
    report = export_model(args.model, args.out, args.quantize, texts, args.max_length)
    print(f"wrote {Path(args.out) / 'model.onnx'} and {Path(args.out) / 'export.json'} "
          f"({report['texts']} texts checked)", file=sys.stdout)
    return 0
