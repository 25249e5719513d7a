"""``fedtext serve`` over real HTTP on localhost, and ``fedtext export`` (ONNX, int8) round trips.

The server runs as its own process (``fedtext serve``); the tests talk to it
with httpx, as any client would: TEI's request and response shapes, dynamic
batching under concurrency (every request gets its own rows back), each bad
request a 4xx naming the field, the metrics counting them, the bounded queue
answering 503, and SIGTERM letting requests in flight finish.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from common.config import FedTextConfig
from common.inference import OnnxClassifier, TorchClassifier, load_classifier, softmax
from serve.process import ServeProcess

TEXTS = ["A warm, funny and moving film.", "Dull, clumsy and far too long.", "An ok movie.",
         "The best thing I saw all year, a delight from start to finish.", "Meh."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 1-layer model, as a run writes it (mean pooling, fedtext.json, tokenizer)."""
    from server.global_model import GlobalModel

    folder = tmp_path_factory.mktemp("model") / "model"
    GlobalModel(FedTextConfig(num_hidden_layers=1, max_length=32, out=str(folder.parent)),
                ["fresh", "rotten"]).save(folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir: Path):  # noqa: ANN201
    s = ServeProcess(model_dir, "--max-wait-ms", "50")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> TorchClassifier:
    return TorchClassifier(model_dir)


def _scores(rows: list[dict]) -> dict[str, float]:
    return {r["label"]: r["score"] for r in rows}


def test_single_text_gets_every_label_best_first(server: ServeProcess, reference: TorchClassifier) -> None:
    reply = server.post({"inputs": TEXTS[0]})
    assert reply.status_code == 200
    rows = reply.json()
    assert [r["label"] for r in rows] == sorted(reference.labels, key=lambda k: -_scores(rows)[k])
    assert rows[0]["score"] >= rows[1]["score"] and abs(sum(r["score"] for r in rows) - 1) < 1e-6
    expected = softmax(reference.logits([TEXTS[0]]).astype(np.float64))[0]
    for label, score in _scores(rows).items():
        assert score == pytest.approx(expected[reference.labels.index(label)], abs=1e-5)


@pytest.mark.parametrize("form", ["tei", "flat"])
def test_batch_gets_one_list_per_text(server: ServeProcess, reference: TorchClassifier, form: str) -> None:
    inputs = [[t] for t in TEXTS] if form == "tei" else TEXTS
    reply = server.post({"inputs": inputs, "raw_scores": True})
    assert reply.status_code == 200
    expected = reference.logits(TEXTS)
    for rows, logits in zip(reply.json(), expected, strict=True):
        for label, score in _scores(rows).items():
            assert score == pytest.approx(float(logits[reference.labels.index(label)]), abs=1e-4)


def test_concurrent_requests_share_batches_and_get_their_own_results(
    server: ServeProcess, reference: TorchClassifier, rt_rows: list[dict[str, str]]
) -> None:
    texts = [r["text"] for r in rt_rows[:48]]
    expected = softmax(reference.logits(texts).astype(np.float64))
    before_batches, before_requests = server.metric("fedtext_batch_requests_count"), server.metric(
        "fedtext_batch_requests_sum")
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda t: server.post({"inputs": t, "truncate": True}), texts))
    for text, reply, probs in zip(texts, replies, expected, strict=True):
        assert reply.status_code == 200, text
        scores = _scores(reply.json())
        assert [scores[k] for k in reference.labels] == pytest.approx(list(probs), abs=1e-4), text
    batches = server.metric("fedtext_batch_requests_count") - before_batches
    requests = server.metric("fedtext_batch_requests_sum") - before_requests
    assert requests == len(texts)
    assert batches < len(texts), "no two concurrent requests shared a forward pass"


BAD = [
    ("not-json", b"{inputs: nope", 422, "body: not JSON"),
    ("not-an-object", [1, 2], 422, "body: expected a JSON object"),
    ("missing-inputs", {"input": "x"}, 422, "inputs: missing"),
    ("empty-list", {"inputs": []}, 422, "inputs: empty list"),
    ("non-string-item", {"inputs": ["fine", 3]}, 422, "inputs[1]: expected a text"),
    ("number-inputs", {"inputs": 3}, 422, "inputs: expected a text or a list"),
    ("empty-text", {"inputs": "   "}, 422, "inputs: empty text"),
    ("empty-text-in-batch", {"inputs": ["ok", ""]}, 422, "inputs[1]: empty text"),
    ("text-pair", {"inputs": [["premise", "hypothesis"]]}, 422, "inputs[0]: a text pair"),
    ("one-megabyte-text", {"inputs": "a" * 1_000_000}, 413, "inputs: 1000000 characters"),
    ("too-many-texts", {"inputs": ["t"] * 65}, 413, "inputs: 65 texts; at most 64"),
    ("too-long-untruncated", {"inputs": "word " * 200}, 413, "tokens; at most 32"),
    ("raw-scores-not-bool", {"inputs": "x", "raw_scores": "yes"}, 422, "raw_scores: expected true or false"),
]


@pytest.mark.parametrize(("body", "status", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_is_a_4xx_naming_the_field(server: ServeProcess, body: object, status: int, needle: str) -> None:
    before = server.metric(f'fedtext_requests_total{{status="{status}"}}')
    reply = server.post(body)
    assert reply.status_code == status
    error = reply.json()
    assert needle in error["error"] and error["error_type"] == "Validation"
    assert server.metric(f'fedtext_requests_total{{status="{status}"}}') == before + 1
    assert server.post({"inputs": "still serving"}).status_code == 200


def test_truncate_true_accepts_a_long_text(server: ServeProcess) -> None:
    assert server.post({"inputs": "word " * 200, "truncate": True}).status_code == 200


def test_info_health_and_metrics(server: ServeProcess, model_dir: Path) -> None:
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info["model_type"]["classifier"]["id2label"] == {"0": "fresh", "1": "rotten"}
    assert (info["backend"], info["max_input_length"], info["run"]) == ("pytorch", 32, str(model_dir.parent))
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name in ("fedtext_requests_total", "fedtext_request_duration_seconds_bucket", "fedtext_batch_size_bucket",
                 "fedtext_queue_size", "fedtext_inference_duration_seconds_count"):
        assert name in text, name


def test_a_full_queue_answers_503_with_retry_after(model_dir: Path) -> None:
    s = ServeProcess(model_dir, "--max-queue", "2", "--max-wait-ms", "400")
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(lambda t: s.post({"inputs": t}), TEXTS * 3))
        codes = [r.status_code for r in replies]
        assert set(codes) == {200, 503}, codes
        refused = next(r for r in replies if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and refused.json()["error_type"] == "Overloaded"
        assert s.post({"inputs": "after the burst"}).status_code == 200
    finally:
        s.stop()


def test_sigterm_lets_requests_in_flight_finish(model_dir: Path) -> None:
    s = ServeProcess(model_dir, "--max-wait-ms", "800")  # requests sit in an open batch for 0.8 s
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(s.post, {"inputs": t}) for t in TEXTS]
        time.sleep(0.3)
        s.process.send_signal(signal.SIGTERM)
        replies = [f.result() for f in futures]
    assert [r.status_code for r in replies] == [200] * len(TEXTS)
    assert s.process.wait(timeout=60) == 0
    assert "fedtext serve: stopped" in s.log.read_text()


# --- export -----------------------------------------------------------------------------


def test_export_round_trip_with_int8(model_dir: Path, tmp_path: Path, rt_rows: list[dict[str, str]]) -> None:
    from serve.export import export_model

    texts = [r["text"] for r in rt_rows[:120]]
    report = export_model(model_dir, tmp_path / "onnx", "int8", texts, echo=lambda *_: None)
    assert report["model.onnx"]["label_agreement"] >= 0.995
    assert report["model.onnx"]["max_score_difference"] < 1e-4
    assert report["model.int8.onnx"]["bytes"] < 0.5 * report["model.onnx"]["bytes"]
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["texts"] == 120
    exported = load_classifier(tmp_path / "onnx")
    assert isinstance(exported, OnnxClassifier) and exported.backend == "onnxruntime-int8"
    fp32 = OnnxClassifier(tmp_path / "onnx", graph="model.onnx")
    np.testing.assert_allclose(fp32.logits(texts), TorchClassifier(model_dir).logits(texts), atol=1e-4)
    assert (exported.labels, exported.max_length) == (["fresh", "rotten"], 32)


def test_predict_and_serve_take_the_exported_folder(model_dir: Path, tmp_path: Path) -> None:
    from serve.export import export_model
    from simulations.cli import main

    export_model(model_dir, tmp_path / "onnx", "none", TEXTS, echo=lambda *_: None)
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", str(tmp_path / "onnx"), "--out", str(out), *TEXTS]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = TorchClassifier(model_dir).logits(TEXTS).argmax(-1)
    assert [r["label"] for r in rows] == [["fresh", "rotten"][i] for i in expected]
    s = ServeProcess(tmp_path / "onnx")
    try:
        assert httpx.get(f"{s.url}/info", timeout=10).json()["backend"] == "onnxruntime"
        assert s.post({"inputs": TEXTS}).status_code == 200
    finally:
        s.stop()
