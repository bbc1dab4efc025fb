"""The export folder: layout, manifest, graph signature, checker, detection, int8 and fp16,
and the ``gpt-simple export`` command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_lm_format import plugin as lm_format_plugin
from gpt_simple_onnx import layout
from gpt_simple_onnx.export import DRIFT_PROMPTS
from tests.onnx.conftest import Exported
from tests.onnx.helpers import onnx_model, torch_model
from tests.support.cli import cli
from tests.support.plugins import resolve_checkpoint

pytestmark = pytest.mark.onnx


def graph_signature(path: Path) -> dict[str, list]:
    """name -> shape (ints for fixed dims, names for dynamic ones) of inputs and outputs."""
    model = onnx.load(str(path), load_external_data=False)
    signature = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        signature[value.name] = [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims
        ]
    return signature


def test_folder_layout_and_manifest(
    exported: Exported, checkpoints: dict[str, CheckpointInfo]
) -> None:
    info = exported("default")
    source = checkpoints["default"]
    folder = info.path
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.onnx",
        "tokenizer",
    ]
    assert not (folder / "model" / "config.json").exists()  # never looks like a checkpoint
    assert lm_format_plugin.gpt_simple_inspect_checkpoint(folder, None, True) is None
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["format"], manifest["format_version"]) == ("gpt-simple-onnx", 1)
    weights_hash = hashlib.sha256(source.weights.read_bytes()).hexdigest()
    assert manifest["source"] == {
        "path": str(source.path),
        "step": source.step,
        "weights": "model.safetensors",
        "sha256": weights_hash,
    }
    assert (manifest["dtype"], manifest["quantization"], manifest["opset"]) == ("fp32", None, 20)
    assert manifest["exporter"] == "torch.onnx.export(dynamo=True)"
    assert set(manifest["versions"]) == {
        "gpt-simple-inference", "torch", "onnx", "onnxscript", "onnxruntime"
    }  # fmt: skip
    assert manifest["versions"]["torch"].startswith("2.")
    assert manifest["size_bytes"] == (folder / "model.onnx").stat().st_size
    drift = manifest["logits_drift"]
    assert drift["prompts"] == len(DRIFT_PROMPTS) and drift["max_abs_diff"] < 1e-4
    assert json.loads((folder / "config.json").read_text()) == dict(source.config)
    assert (folder / "tokenizer" / "tokenizer.json").read_bytes() == (
        source.tokenizer / "tokenizer.json"
    ).read_bytes()


def test_graph_is_the_decoder_with_past_layout(exported: Exported) -> None:
    info = exported("gqa-linear-untied")  # n_layer 2, 2 kv heads of 16
    path = info.path / "model.onnx"
    assert (info.path / "model.onnx.data").is_file()  # exported with external data
    onnx.checker.check_model(str(path), full_check=True)  # path-based: reads external data
    batch, seq, past = "batch_size", "sequence_length", "past_sequence_length"
    signature = graph_signature(path)
    assert list(signature) == [
        "input_ids", "attention_mask", "position_ids",
        "past_key_values.0.key", "past_key_values.0.value",
        "past_key_values.1.key", "past_key_values.1.value",
        "logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value",
    ]  # fmt: skip
    assert signature["input_ids"] == signature["position_ids"] == [batch, seq]
    assert signature["attention_mask"] == [batch, "total_sequence_length"]
    assert signature["past_key_values.1.value"] == [batch, 2, past, 16]
    assert signature["logits"] == [batch, seq, 384]
    present = signature["present.0.key"]
    assert present[:2] == [batch, 2] and present[3] == 16
    assert set(present[2].replace(" ", "").split("+")) == {past, seq}


def test_export_folder_is_a_checkpoint(exported: Exported) -> None:
    info = exported("default")
    resolved = resolve_checkpoint(str(info.path))
    assert resolved.format == "onnx" and resolved.path == info.path
    assert resolved.step == 100 and resolved.weights == info.path / "model.onnx"
    assert resolved.details["dtype"] == "fp32" and resolved.eos_id is not None
    assert resolved.context_length == 128


def prefill_logits(model, reference) -> tuple[np.ndarray, np.ndarray]:
    """Next-token logits after each drift prompt: from ``model`` and from ``reference``."""
    ids = [model.tokenizer.encode(text) for text in DRIFT_PROMPTS]
    rows = list(range(len(ids)))
    return model.forward(rows, ids), reference.forward(rows, ids)


#: tiny random models drift a lot under quantization (measured ~0.05-0.1 of the largest logit
#: at 8 bits, more at 4); a broken graph or cache would be off by the whole logit scale
DRIFT_BOUND = {"int8": 0.15, "int4": 1.0}


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_weight_only_export_quantizes_every_matrix_and_reports_its_drift(
    exported: Exported, checkpoints: dict[str, CheckpointInfo], quantize: str
) -> None:
    """Weight-only (MatMulNBits): every linear layer and the tied output head (folded out of
    its Transpose first) are quantized at the scheme's bits; the drift is measured, the graph
    runs prefill and decode, and the manifest says how it was quantized."""
    from onnx import helper

    fp32, quantized = exported("default"), exported("default", quantize=quantize)
    manifest = json.loads((quantized.path / "manifest.json").read_text())
    scheme = layout.WEIGHT_ONLY[quantize]
    assert manifest["quantization"] == quantize
    assert manifest["quantization_scheme"] == scheme.as_dict()
    graph = onnx.load(str(quantized.path / "model.onnx")).graph
    initializers = {i.name for i in graph.initializer}
    config = json.loads((fp32.path / "config.json").read_text())
    float_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers]
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert float_matmuls == [] and len(nbits) >= 4 * config["n_layer"] + 1
    for node in nbits:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["bits"] == scheme.bits
        assert attributes["block_size"] == scheme.block_size
    drift = manifest["logits_drift"]["max_abs_diff"]
    scale = manifest["logits_drift"]["max_abs_logit"]
    assert 0 < drift < DRIFT_BOUND[quantize] * scale
    model = onnx_model(quantized)
    assert model.dtype == quantize and model.notes["quantization"] == quantize
    reference = torch_model(checkpoints["default"])
    got, expected = prefill_logits(model, reference)
    assert np.abs(got - expected).max() == pytest.approx(drift, rel=1e-3)
    rows = list(range(len(DRIFT_PROMPTS)))
    step = model.forward(rows, [[5]] * len(rows)) - reference.forward(rows, [[5]] * len(rows))
    print(f"{quantize} drift: prefill {drift:.3e}, decode {np.abs(step).max():.3e} of {scale:.2f}")
    assert np.abs(step).max() < DRIFT_BOUND[quantize] * np.abs(expected).max()


def test_fold_transposed_weights_keeps_the_product() -> None:
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from gpt_simple_onnx.export import fold_transposed_weights

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    x = np.ones((2, 4), dtype=np.float32)
    before = ReferenceEvaluator(helper.make_model(graph)).run(None, {"x": x})[0]
    assert fold_transposed_weights(graph) == 1
    assert [n.op_type for n in graph.node] == ["MatMul"]
    after = ReferenceEvaluator(helper.make_model(graph)).run(None, {"x": x})[0]
    assert np.array_equal(before, after)


def test_fp16_export_runs_close_to_fp32(
    exported: Exported, checkpoints: dict[str, CheckpointInfo]
) -> None:
    fp16 = exported("mqa-relu", dtype="fp16")
    model = onnx_model(fp16)
    assert model.dtype == "fp16"
    reference = torch_model(checkpoints["mqa-relu"])
    ids = [model.tokenizer.encode(text) for text in DRIFT_PROMPTS]
    rows = list(range(len(ids)))
    for feed in (ids, [[7]] * len(rows)):
        got, expected = model.forward(rows, feed), reference.forward(rows, feed)
        assert got.dtype == np.float32
        assert np.abs(got - expected).max() <= 2e-2 * np.abs(expected).max()


def test_export_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, checkpoints: dict[str, CheckpointInfo]
) -> None:
    """The CLI refuses what cannot be exported before exporting anything, and writes the
    summary (size, drift) as JSON on stdout."""
    source = str(checkpoints["default"].path)
    out = tmp_path / "export"
    for flags, message in [
        (["--dtype", "bf16"], "cannot export dtype bf16"),
        (["--opset", "17"], "opset 17 is too old"),
        (["--quantize", "int8", "--dtype", "fp16"], "int8 quantization starts from fp32"),
        (["--format", "tflite"], "no exporter for format 'tflite' (available: onnx)"),
    ]:
        args = ["export", source, "--out", str(out), *flags]
        if "--format" not in flags:
            args += ["--format", "onnx"]
        code, stdout, stderr = cli(capsys, *args)
        assert code != 0 and message in stderr and stdout == ""
    assert not out.exists()
    code, stdout, stderr = cli(capsys, "export", source, "--format", "onnx", "--out", str(out))
    assert code == 0, stderr
    summary = json.loads(stdout)  # nothing else on stdout: the exporter's progress is on stderr
    assert summary["out"] == str(out) and summary["size_bytes"] > 0
    assert summary["logits_drift"]["max_abs_diff"] < 1e-4
    code, _, stderr = cli(capsys, "export", source, "--format", "onnx", "--out", str(out))
    assert code != 0 and "not empty" in stderr
