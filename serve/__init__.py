"""Put the global model to work.

- ``serve.app``: ``fedtext serve``, a TEI-compatible HTTP endpoint (FastAPI on uvicorn);
- ``serve.batcher``: dynamic batching of concurrent requests, with a bounded queue;
- ``serve.export``: ``fedtext export``, ONNX (and int8) checked against PyTorch;
- ``serve.cli``: the two commands' flags;
- ``serve.bench``: the load benchmark that writes docs/SERVING.md.

The model behind both is a ``common.inference.Classifier`` (PyTorch or ONNX Runtime).
"""
