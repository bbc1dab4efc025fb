"""gpt-simple checkpoint -> ONNX export folder (see :mod:`gpt_simple_onnx.layout`).

The graph is traced from :meth:`gpt_simple_torch.shared.GPT.forward_past`: the PyTorch
backend's own model (its declared shared module), with its past keys and values passed in and
out, so there is exactly one copy of the model math. :class:`DecoderWithPast` only flattens
that signature into named tensors.

Export recipe (``shared/notes/cpu-and-onnx-facts.md``): the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, which needs onnxscript), opset 18 or later, example
sizes of at least 2 on every dynamic dimension (torch.export specialises 0 and 1), and one graph
for prefill (past of length 0) and decode. The attention mask is built in-graph from
``attention_mask`` with the dtype's most negative finite value, so padded rows stay finite.

Importing this module imports torch: the plugin imports it only when an export runs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from gpt_simple.plugins import CheckpointError, CheckpointInfo, ExportOptions
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_lm_format.tokenizer import HFTokenizer
from gpt_simple_onnx import layout
from gpt_simple_onnx.versions import tool_versions
from gpt_simple_torch.shared import GPT, load_model

#: Above this many bytes of weights the graph keeps them in ``model.onnx.data`` (a protobuf
#: file cannot exceed 2 GiB; below the threshold one file is simpler to move around).
EXTERNAL_DATA_BYTES = 1 << 30
#: Prompts the export runs through PyTorch (fp32) and the exported graph to report the drift.
DRIFT_PROMPTS = (
    "The assert statement is a convenient way to",
    "Objects are Python's abstraction for data.",
    "for each item in the list",
    "An exception is raised when",
)
#: Example sizes for tracing: batch, new tokens, past. None may be 0 or 1 (see above).
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 3, 5
EXPORTER = "torch.onnx.export(dynamo=True)"
#: Exporter warnings that say nothing actionable: the batch axis is shared by every input (so
#: torch keeps one name for it), and a pytree deprecation inside torch itself.
QUIET_WARNINGS = (r"# The axis name: .* will not be used", r".*isinstance\(treespec, LeafSpec\)")
GRAPH_LAYOUT = "decoder-with-past (Optimum / onnxruntime-genai names and shapes)"
#: What onnxruntime's quantizer logs on the root logger for every graph that was not run
#: through its shape-inference pre-processing script: nothing a user of ours can act on
#: (the export is quantized as it is meant to be), and it would end up on stderr as
#: ``WARNING:root:...``.
QUANTIZER_NOISE = "pre-processing before quantization"

log = structlog.get_logger(__name__)


class DecoderWithPast(nn.Module):
    """``GPT.forward_past`` with a flat signature: graph inputs and outputs are named tensors
    (``past_key_values.{i}.key``, ...), not nested tuples."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past_flat: Tensor
    ) -> tuple[Tensor, ...]:
        past = list(zip(past_flat[0::2], past_flat[1::2], strict=True))
        logits, presents = self.model.forward_past(input_ids, attention_mask, position_ids, past)
        return (logits, *itertools.chain.from_iterable(presents))


def export_checkpoint(
    info: CheckpointInfo,
    out: Path,
    options: ExportOptions,
    *,
    content_hash: str | None = None,
    external_data: bool | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the export folder of the gpt-simple checkpoint ``info`` into ``out`` (created if
    needed; it should be empty) and return a JSON-ready summary (also in the manifest).

    ``content_hash`` is the weights' sha256 if the caller knows it; ``external_data`` forces
    the weights into (True) or out of (False) ``model.onnx.data`` instead of deciding by size.
    The manifest is written last: a folder without one is an unfinished export.
    """
    started = time.monotonic()
    opset = layout.check_export_options(options)
    if info.weights is None or info.tokenizer is None:
        raise CheckpointError(f"{info.path}: no weights or no tokenizer to export")
    if content_hash is None:
        from gpt_simple_onnx.cache import content_hash as hash_file

        content_hash = hash_file(info.weights)
    config = ModelConfig.from_dict(info.config, source=str(info.path))
    tokenizer = HFTokenizer(info.tokenizer)
    prompts = drift_prompts(tokenizer, config)

    with _phase("loading the weights", weights=str(info.weights), dtype=options.dtype):
        module = load_model(info.weights, config, dtype="fp32")
        with torch.no_grad():
            reference = [
                module(input_ids=torch.tensor([ids])).logits[0, -1].numpy() for ids in prompts
            ]
        if options.dtype != "fp32":
            del module  # one copy of the weights at a time
            module = load_model(info.weights, config, dtype=options.dtype)
    if external_data is None:
        weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        external_data = weight_bytes > EXTERNAL_DATA_BYTES

    out.mkdir(parents=True, exist_ok=True)
    graph = out / layout.MODEL_FILE
    traced = out / ".fp32" / layout.MODEL_FILE if options.quantize else graph
    export_graph(module, config, traced, opset=opset, external_data=external_data)
    del module
    scheme = layout.WEIGHT_ONLY.get(options.quantize or "")
    if scheme is not None:
        how = f"MatMulNBits, {scheme.bits}-bit weights in blocks of {scheme.block_size}"
        with _phase(f"quantizing to {options.quantize} ({how})"):
            quantize_weights(traced, graph, scheme, external_data=external_data)
        shutil.rmtree(traced.parent)
    with _phase("measuring the logits drift against PyTorch fp32", prompts=len(prompts)):
        drift = measure_drift(graph, config, tokenizer, prompts, reference)

    layout.write_json(out / layout.CONFIG_FILE, config.to_dict())
    shutil.copytree(info.tokenizer, out / layout.TOKENIZER_DIR)
    size = sum(f.stat().st_size for f in out.glob(layout.MODEL_FILE + "*"))
    summary: dict[str, Any] = {
        "format": layout.FORMAT_TAG,
        "format_version": layout.FORMAT_VERSION,
        "source": {
            "path": str(info.path),
            "step": info.step,
            "weights": info.weights.name,
            "sha256": content_hash,
        },
        "dtype": options.dtype,
        "quantization": options.quantize,
        "quantization_scheme": scheme.as_dict() if scheme is not None else None,
        "opset": opset,
        "graph": {
            "file": layout.MODEL_FILE,
            "external_data": external_data,
            "layout": GRAPH_LAYOUT,
            "inputs": layout.input_names(config.n_layer),
            "outputs": layout.output_names(config.n_layer),
        },
        "exporter": EXPORTER,
        "versions": tool_versions(),
        "size_bytes": size,
        "logits_drift": drift,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": round(time.monotonic() - started, 1),
        **(extra_manifest or {}),
    }
    layout.write_json(out / layout.MANIFEST_FILE, summary)
    log.info("export: done", out=str(out), seconds=summary["export_seconds"])
    return {"out": str(out), **summary}


@contextlib.contextmanager
def _phase(what: str, **fields: Any) -> Iterator[None]:
    """Log a phase of the export when it starts and, with its time, when it ends: an export
    takes from seconds to many minutes, and a silent terminal reads as a hang."""
    log.info(f"export: {what}", **fields)
    started = time.monotonic()
    yield
    log.info(f"export: {what}: done", seconds=round(time.monotonic() - started, 1))


def drift_prompts(tokenizer: HFTokenizer, config: ModelConfig) -> list[list[int]]:
    """Token ids of :data:`DRIFT_PROMPTS`, within the model's context."""
    prompts = [tokenizer.encode(text)[: config.n_positions] for text in DRIFT_PROMPTS]
    return [ids for ids in prompts if ids] or [[0]]


def example_inputs(config: ModelConfig, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Tracing inputs: a decode step of 3 tokens over a past of 5, batch 2 (no 0 or 1 sizes)."""
    b, t, p = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (b, t), generator=generator)
    mask = torch.ones(b, p + t, dtype=torch.int64)
    positions = torch.arange(p, p + t)[None].expand(b, t).contiguous()
    shape = (b, config.kv_heads, p, config.head_dim)
    past = [torch.randn(shape, generator=generator).to(dtype) for _ in range(2 * config.n_layer)]
    return (ids, mask, positions, *past)


def dynamic_shapes(config: ModelConfig) -> dict[str, Any]:
    """Named dynamic dimensions; torch.export derives ``past + seq`` for the outputs."""
    batch, seq, past = "batch_size", "sequence_length", "past_sequence_length"
    return {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: "total_sequence_length"},
        "position_ids": {0: batch, 1: seq},
        "past_flat": tuple({0: batch, 2: past} for _ in range(2 * config.n_layer)),
    }


def export_graph(
    module: GPT, config: ModelConfig, path: Path, *, opset: int, external_data: bool
) -> None:
    """Trace ``module`` into ``path`` and check it with ``onnx.checker`` (path-based, so
    external data and graphs over 2 GiB are checked too)."""
    import onnx

    wrapper = DecoderWithPast(module).eval()
    args = example_inputs(config, module.wte.weight.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter prints progress on stdout, which belongs to JSONL output: send it to stderr.
    with (
        _phase("tracing the graph (torch.onnx dynamo exporter)", opset=opset),
        contextlib.redirect_stdout(sys.stderr),
        torch.no_grad(),
        _quiet_exporter(),
    ):
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=layout.input_names(config.n_layer),
            output_names=layout.output_names(config.n_layer),
            dynamic_shapes=dynamic_shapes(config),
            optimize=True,
            verbose=False,
        )
        program.save(str(path), external_data=external_data)
    with _phase("checking the graph (onnx.checker)"):
        onnx.checker.check_model(str(path), full_check=True)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings that say nothing actionable (see QUIET_WARNINGS, and
    the list of torchvision ops it skips because torchvision is not installed)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        registration.setLevel(level)


class _QuantizerNoise(logging.Filter):
    """Drops :data:`QUANTIZER_NOISE` from the root logger, lets everything else through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return QUANTIZER_NOISE not in record.getMessage()


class _ToStructlog(logging.Handler):
    """Root-logger warnings of onnxruntime's quantizer, as our own log lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        log.warning(record.getMessage(), source="onnxruntime.quantization")


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """While quantizing: drop the quantizer's pre-processing advice, pass its other warnings on.

    onnxruntime's quantizer logs through the *root* logger (``logging.warning``), which, with no
    handler configured, installs one that prints ``WARNING:root:...`` on stderr for the rest of
    the process. A filter on the root logger drops the advice whoever handles the rest; when no
    handler is configured, a temporary one routes the other warnings to structlog (so nothing
    is installed for good).
    """
    root = logging.getLogger()
    noise = _QuantizerNoise()
    forward = None if root.handlers else _ToStructlog(logging.WARNING)
    root.addFilter(noise)
    if forward is not None:
        root.addHandler(forward)
    # the int4 quantizer logs a line per graph node at INFO on a handler of its own
    nbits = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = nbits.level
    nbits.setLevel(logging.WARNING)
    try:
        yield
    finally:
        nbits.setLevel(level)
        root.removeFilter(noise)
        if forward is not None:
            root.removeHandler(forward)


def quantize_weights(
    source: Path, target: Path, scheme: layout.WeightOnly, *, external_data: bool
) -> None:
    """ONNX Runtime's ``MatMulNBits``: every constant MatMul weight in ``scheme.bits`` bits.

    The tied output head reads the embedding through a Transpose, which the quantizer skips
    (it quantizes constant weights only): it is folded into a constant first, so the largest
    matrix of a small model is quantized too. The embedding itself stays fp32 for its Gather,
    which reads one row a token.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    fold_transposed_weights(model.graph)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=scheme.bits,
        block_size=scheme.block_size,
        is_symmetric=scheme.symmetric,
        accuracy_level=scheme.accuracy_level,
    )
    with contextlib.redirect_stdout(sys.stderr), quiet_quantizer():
        quantizer.process()
    onnx.save_model(
        quantizer.model.model,
        str(target),
        save_as_external_data=external_data,
        location=target.name + ".data" if external_data else None,
    )
    onnx.checker.check_model(str(target))


def fold_transposed_weights(graph: Any) -> int:
    """Replace ``MatMul(x, Transpose(W))`` with ``W`` an initializer by ``MatMul(x, W.T)``, the
    transposed weight stored as an initializer of its own; returns how many were folded."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    folded = 0
    for node in list(graph.node):
        transpose = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if transpose is None or transpose.op_type != "Transpose":
            continue
        if transpose.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[transpose.input[0]])
        name = f"{transpose.input[0]}.transposed"
        graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(np.transpose(weight, perm)), name)
        )
        node.input[1] = name
        if uses[transpose.output[0]] == 1:
            graph.node.remove(transpose)
        folded += 1
    return folded


def measure_drift(
    graph: Path,
    config: ModelConfig,
    tokenizer: HFTokenizer,
    prompts: Sequence[Sequence[int]],
    reference: Sequence[np.ndarray],
) -> dict[str, Any]:
    """Max abs difference between the graph's next-token logits after each prompt (run by
    the backend's own runner) and PyTorch fp32's; not measured without onnxruntime."""
    from gpt_simple_onnx import runtime
    from gpt_simple_onnx.runner import OnnxModel

    summary: dict[str, Any] = {"reference": "torch backend, fp32", "prompts": len(prompts)}
    if not runtime.available():
        summary["max_abs_diff"] = None
        summary["note"] = "onnxruntime is not installed: the export was not run"
        return summary
    session, _ = runtime.create_session(graph, device="cpu", threads=None)
    model = OnnxModel(session, config, tokenizer, device="cpu", dtype="export")
    logits = model.forward(list(range(len(prompts))), prompts)
    model.close()
    expected = np.stack(reference)
    summary["max_abs_diff"] = float(np.abs(logits - expected).max())
    summary["max_abs_logit"] = float(np.abs(expected).max())
    return summary
