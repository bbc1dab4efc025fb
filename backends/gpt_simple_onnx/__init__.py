"""ONNX Runtime backend and ``gpt-simple export --format onnx``.

* :mod:`~gpt_simple_onnx.layout`: the export folder (graph, config, tokenizer, manifest) and
  its detection as a checkpoint;
* :mod:`~gpt_simple_onnx.export`: gpt-simple checkpoint -> decoder-with-past ONNX graph
  (needs the ``export`` extra: torch, onnx, onnxscript);
* :mod:`~gpt_simple_onnx.cache`: exports made on demand for ``--backend onnx``, keyed by the
  weights' content hash;
* :mod:`~gpt_simple_onnx.runtime`: ONNX Runtime sessions, providers and threads;
* :mod:`~gpt_simple_onnx.runner`: the engine's forward-step protocol over the graph's KV cache;
* :mod:`~gpt_simple_onnx.plugin`: the backend, the exporter and the hooks (cheap to import).
"""
