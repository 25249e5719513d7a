"""``fedtext serve``: the global model behind a TEI-compatible HTTP API.

Endpoints (request and response shapes of Hugging Face Text Embeddings
Inference for sequence classification, so a TEI client works unchanged):

================  ===============================================================
``POST /predict``  ``{"inputs": "text"}`` -> ``[{"label", "score"}, ...]``, every
                   label, best first (softmax scores; logits with
                   ``"raw_scores": true``). A batch, ``{"inputs": [["t1"],
                   ["t2"]]}`` (TEI's form) or ``{"inputs": ["t1", "t2"]}``, gets a
                   list of such lists. A text longer than the model's max length
                   is refused (413) unless ``"truncate": true``.
``GET /health``    200 once the model is loaded
``GET /info``      model, labels, max length, backend, batching limits, the run
``GET /metrics``   Prometheus: requests by status, request and inference
                   latency, batch sizes, queue depth
================  ===============================================================

A bad request gets a 4xx JSON body ``{"error": "...", "error_type": "Validation"}``
naming the field, and the service carries on. Requests wait in a bounded
queue (``serve.batcher``): past it, 503 with ``Retry-After``. On SIGTERM
uvicorn stops accepting connections and the requests in flight finish.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from common.inference import Classifier, softmax
from serve.batcher import BatchStats, DynamicBatcher, Overloaded


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the service (``fedtext serve`` flags)."""

    max_batch_tokens: int = 8192
    max_batch_rows: int = 64
    max_wait_ms: float = 5.0
    max_queue_rows: int = 1024
    max_client_batch_size: int = 64
    max_text_chars: int = 100_000


class RequestError(Exception):
    """A bad request: status code, message naming the field, TEI error type."""

    def __init__(self, status: int, message: str, error_type: str = "Validation") -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("fedtext_requests", "Requests to /predict, by HTTP status.", ["status"],
                                registry=self.registry)
        self.texts = Counter("fedtext_texts", "Texts classified.", registry=self.registry)
        self.errors = Counter("fedtext_request_errors", "Refused or failed requests, by error type.",
                              ["error_type"], registry=self.registry)
        self.latency = Histogram("fedtext_request_duration_seconds", "Time from request to response.",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.inference = Histogram("fedtext_inference_duration_seconds", "Forward pass of one batch.",
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                   registry=self.registry)
        self.batch_rows = Histogram("fedtext_batch_size", "Texts per forward pass.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_requests = Histogram("fedtext_batch_requests", "Requests sharing a forward pass.",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue = Gauge("fedtext_queue_size", "Texts waiting for a forward pass.", registry=self.registry)

    def on_batch(self, stats: BatchStats) -> None:
        self.inference.observe(stats.seconds)
        self.batch_rows.observe(stats.rows)
        self.batch_requests.observe(stats.requests)


# --- reading a request -------------------------------------------------------------------


def parse_predict(body: bytes, settings: ServeSettings) -> tuple[list[str], bool, bool, bool]:
    """(texts, batched, raw_scores, truncate) of a ``/predict`` body, or :class:`RequestError`."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(422, f"body: not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "body: expected a JSON object with 'inputs'")
    if "inputs" not in payload:
        raise RequestError(422, "inputs: missing (a text, or a list of texts)")
    flags = {}
    for key in ("raw_scores", "truncate"):
        value = payload.get(key, False)
        if not isinstance(value, bool):
            raise RequestError(422, f"{key}: expected true or false, got {json.dumps(value)[:40]}")
        flags[key] = value
    inputs = payload["inputs"]
    if isinstance(inputs, str):
        texts, batched = [inputs], False
    elif isinstance(inputs, list):
        if not inputs:
            raise RequestError(422, "inputs: empty list; expected at least one text")
        texts, batched = [_single_text(item, i) for i, item in enumerate(inputs)], True
    else:
        raise RequestError(422, f"inputs: expected a text or a list of texts, got {type(inputs).__name__}")
    if len(texts) > settings.max_client_batch_size:
        raise RequestError(413, f"inputs: {len(texts)} texts; at most {settings.max_client_batch_size} "
                                "per request (max-client-batch-size)")
    for i, text in enumerate(texts):
        where = f"inputs[{i}]" if batched else "inputs"
        if not text.strip():
            raise RequestError(422, f"{where}: empty text")
        if len(text) > settings.max_text_chars:
            raise RequestError(413, f"{where}: {len(text)} characters; at most {settings.max_text_chars}")
    return texts, batched, flags["raw_scores"], flags["truncate"]


def _single_text(item: Any, i: int) -> str:
    """A batch item: a text, or TEI's one-text list ``["text"]`` (text pairs are not classified here)."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and len(item) == 1 and isinstance(item[0], str):
        return item[0]
    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
        raise RequestError(422, f"inputs[{i}]: a text pair; this model classifies single texts")
    raise RequestError(422, f"inputs[{i}]: expected a text, got {json.dumps(item)[:40]}")


def predictions(logits: np.ndarray, labels: list[str], raw_scores: bool) -> list[list[dict[str, Any]]]:
    """TEI's response rows: every label with its score, best first."""
    scores = logits if raw_scores else softmax(logits.astype(np.float64))
    return [
        [{"score": float(row[j]), "label": labels[j]} for j in np.argsort(-row, kind="stable")]
        for row in scores
    ]


# --- the application -------------------------------------------------------------------------


def create_app(classifier: Classifier, settings: ServeSettings | None = None) -> Any:
    """The ASGI application serving ``classifier``."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    settings = settings or ServeSettings()
    metrics = Metrics()
    batcher = DynamicBatcher(classifier.logits_of_ids, settings.max_batch_tokens, settings.max_batch_rows,
                             settings.max_wait_ms / 1000, settings.max_queue_rows, on_batch=metrics.on_batch)

    @asynccontextmanager
    async def lifespan(_app: Any):  # noqa: ANN202
        await batcher.start()
        yield
        await batcher.stop()  # uvicorn lets in-flight requests finish first

    app = FastAPI(title="fedtext serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings

    def error(exc: RequestError, headers: dict[str, str] | None = None) -> Any:
        metrics.requests.labels(status=str(exc.status)).inc()
        metrics.errors.labels(error_type=exc.error_type).inc()
        return JSONResponse({"error": exc.message, "error_type": exc.error_type}, exc.status, headers=headers)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        started = time.perf_counter()
        try:
            texts, batched, raw_scores, truncate = parse_predict(await request.body(), settings)
            ids = classifier.encode(texts)
            for i, row in enumerate(ids):
                if len(row) > classifier.max_length and not truncate:
                    where = f"inputs[{i}]" if batched else "inputs"
                    raise RequestError(413, f"{where}: {len(row)} tokens; at most {classifier.max_length} "
                                            "(or send \"truncate\": true)")
            ids = [classifier.truncate(row) for row in ids]
            metrics.queue.set(batcher.queued_rows + len(ids))
            logits = await batcher.submit(ids)
        except RequestError as exc:
            return error(exc)
        except Overloaded as exc:
            return error(RequestError(503, f"overloaded: {exc}; retry shortly", "Overloaded"),
                         headers={"Retry-After": "1"})
        except Exception as exc:  # noqa: BLE001 - the model failed: say so, keep serving
            return error(RequestError(500, f"inference failed: {type(exc).__name__}: {exc}", "Backend"))
        finally:
            metrics.queue.set(batcher.queued_rows)
        rows = predictions(logits, classifier.labels, raw_scores)
        metrics.requests.labels(status="200").inc()
        metrics.texts.inc(len(texts))
        metrics.latency.observe(time.perf_counter() - started)
        return JSONResponse(rows if batched else rows[0])

    @app.get("/health")
    async def health() -> Any:
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> Any:
        described = classifier.describe()
        return JSONResponse({
            "model_id": described["model"],
            "model_type": {"classifier": {"id2label": dict(enumerate(classifier.labels)),
                                          "label2id": {n: i for i, n in enumerate(classifier.labels)}}},
            "max_input_length": classifier.max_length,
            "backend": described["backend"],
            "run": described["run"],
            **asdict(settings),
        })

    @app.get("/metrics")
    async def prometheus() -> Any:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
