"""The export folder: a self-contained checkpoint that ``--checkpoint DIR`` accepts.

::

    DIR/
      model.onnx        the decoder-with-past graph (+ model.onnx.data: external weights,
                        written when the weights are too large for one protobuf file)
      config.json       the gpt-simple model config (the same keys as model/config.json)
      tokenizer/        a copy of the checkpoint's tokenizer folder
      manifest.json     {"format": "gpt-simple-onnx", "format_version": 1, source, dtype, ...}

It deliberately has no ``model/config.json`` and no ``checkpoints/``, so the gpt-simple
format detector never mistakes it for a trainer checkpoint; the ONNX plugin claims it by the
format tag of its manifest. The graph's names (Optimum / onnxruntime-genai layout)::

    inputs   input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64,
             position_ids [batch, seq] int64,
             past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
    outputs  logits [batch, seq, vocab],
             present.{i}.key / .value [batch, kv_heads, past + seq, head_dim]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from gpt_simple.plugins import CheckpointError, CheckpointInfo, ExportOptions
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_lm_format.layout import check_tokenizer
from gpt_simple_lm_format.tokenizer import check_tokenizer_folder

#: The checkpoint format name backends declare (``formats = {"onnx": ...}``).
FORMAT = "onnx"
#: The manifest's tag and the layout version this code reads and writes.
FORMAT_TAG = "gpt-simple-onnx"
FORMAT_VERSION = 1

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
MANIFEST_FILE = "manifest.json"

#: Opset 18 is the oldest the dynamo exporter writes graphs ONNX Runtime accepts (at 17 its
#: ``Split`` carries ``num_outputs``, which ORT rejects); 20 is torch's default.
MIN_OPSET = 18
DEFAULT_OPSET = 20
DTYPES = ("fp32", "fp16")
QUANTIZATIONS = (None, "int8", "int4")


@attrs.frozen
class WeightOnly:
    """A weight-only quantization as ONNX Runtime's ``MatMulNBits`` runs it: every constant
    matrix of a MatMul stored in ``bits`` per weight, ``block_size`` weights sharing one scale,
    activations quantized to int8 for the dot products (``accuracy_level`` 4)."""

    bits: int
    block_size: int
    symmetric: bool = True
    accuracy_level: int = 4

    def as_dict(self) -> dict[str, Any]:
        return {"op": "MatMulNBits", **attrs.asdict(self)}


#: ``--quantize`` / ``model.quantize`` -> how. Block sizes measured on GPT-2-small, batch 1
#: (2-CPU AMD EPYC, AVX2; docs/performance.md): 8 bits ran 94/105/109/104 tok/s at blocks of
#: 32/64/128/256, so 128; 4 bits ran fastest and drifted least at 32. int8 compute
#: (``accuracy_level`` 4) against fp32 compute: 120 vs 54 tok/s at 4 bits.
WEIGHT_ONLY = {
    "int8": WeightOnly(bits=8, block_size=128),
    "int4": WeightOnly(bits=4, block_size=32),
}


def past_names(n_layer: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


def input_names(n_layer: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids", *past_names(n_layer)]


def output_names(n_layer: int) -> list[str]:
    return ["logits", *present_names(n_layer)]


@attrs.frozen
class Manifest:
    """What ``manifest.json`` says about an export (the fields code relies on, plus all)."""

    dtype: str
    quantization: str | None
    opset: int
    source: Mapping[str, Any]
    raw: Mapping[str, Any]

    @property
    def runs_as(self) -> str:
        """The dtype name a run reports: ``int8`` for a quantised export, else its dtype."""
        return self.quantization or self.dtype


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest if it carries our format tag, else None (not an export).

    A tagged manifest that is unreadable, of a newer layout version or missing fields raises
    :class:`CheckpointError`: the folder is ours but unusable.
    """
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        if FORMAT_TAG in text:  # ours, but damaged
            raise CheckpointError(f"{path}: cannot read the export manifest: {exc}") from None
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_TAG:
        return None
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: export layout version {raw.get('format_version')!r}; this version of "
            f"gpt-simple reads version {FORMAT_VERSION} (re-export it with this version)"
        )
    try:
        manifest = Manifest(
            dtype=raw["dtype"],
            quantization=raw.get("quantization"),
            opset=int(raw["opset"]),
            source=dict(raw.get("source") or {}),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: export manifest lacks a valid {exc}") from None
    if manifest.dtype not in DTYPES or manifest.quantization not in QUANTIZATIONS:
        raise CheckpointError(
            f"{path}: unknown dtype {manifest.dtype!r} / quantization {manifest.quantization!r}"
        )
    return manifest


def check_export_options(options: ExportOptions) -> int:
    """Refuse what the export cannot write; return the opset to use."""
    if options.dtype not in DTYPES:
        hint = " (ONNX Runtime has no bf16 kernels on the CPU)" if options.dtype == "bf16" else ""
        raise ValueError(
            f"cannot export dtype {options.dtype}{hint}: use fp32 (any device) or fp16 (CUDA)"
        )
    if options.quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {options.quantize!r} (use int8 or int4)")
    if options.quantize and options.dtype != "fp32":
        raise ValueError(
            f"{options.quantize} quantization starts from fp32 weights: use --dtype fp32"
        )
    opset = options.opset or DEFAULT_OPSET
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old: the dynamo exporter's graphs need opset "
            f">= {MIN_OPSET} for ONNX Runtime (the default is {DEFAULT_OPSET})"
        )
    return opset


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def inspect(path: Path, tokenizer: Path | None, load_tokenizer: bool) -> CheckpointInfo | None:
    """Claim and check an export folder (nothing is loaded but JSON and the tokenizer)."""
    if not path.is_dir():
        return None
    manifest = read_manifest(path)
    if manifest is None:
        return None
    graph = path / MODEL_FILE
    if not graph.is_file():
        raise CheckpointError(f"{path}: an ONNX export without its graph {graph.name}")
    config = ModelConfig.from_file(path / CONFIG_FILE)
    if tokenizer is None:
        tokenizer_dir = path / TOKENIZER_DIR
    else:
        tokenizer_dir = tokenizer.parent if tokenizer.name == "tokenizer.json" else tokenizer
    check_tokenizer_folder(tokenizer_dir)
    eos_id, details, warnings = (
        check_tokenizer(tokenizer_dir, config, path) if load_tokenizer else (None, {}, [])
    )
    details.update(
        dtype=manifest.dtype,
        quantization=manifest.quantization,
        opset=manifest.opset,
        source=manifest.source.get("path"),
    )
    return CheckpointInfo(
        format=FORMAT,
        path=path,
        tokenizer=tokenizer_dir,
        step=manifest.source.get("step"),
        selected_because=None,
        weights=graph,
        param_count=config.param_count(),
        context_length=config.n_positions,
        eos_id=eos_id,
        config=config.to_dict(),
        warnings=tuple(warnings),
        details=details,
    )
