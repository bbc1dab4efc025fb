"""The plugin as the core sees it: registration, cheap import, detection, pre-flight, providers
and threads, ``gpt-simple backends``, the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import gpt_simple
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.cpus import usable_cpus
from gpt_simple_core.errors import BackendError, CheckpointError
from gpt_simple_core.protocol import AUTO, EXPLICIT, LoadRequest
from gpt_simple_onnx import layout, plugin, runtime
from gpt_simple_onnx.plugin import OnnxBackend, OnnxExporter
from gpt_simple_onnx.runner import OnnxModel
from tests.conftest import REPO_ROOT
from tests.onnx.conftest import Exported
from tests.support.cli import cli
from tests.support.plugins import preflight_of

pytestmark = pytest.mark.onnx

BOTH_PACKAGES = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"}


def test_registers_the_backend_and_the_exporter() -> None:
    backends, exporters = [], []
    plugin.gpt_simple_register_backends(backends.append)
    plugin.gpt_simple_register_exporters(exporters.append)
    (backend,) = backends
    assert isinstance(backend, OnnxBackend) and backend.name == "onnx"
    assert backend.formats == {"onnx": AUTO, "gpt-simple": EXPLICIT}
    assert (backend.dtypes, backend.devices) == (("fp32", "fp16"), ("cpu", "cuda"))
    (exporter,) = exporters
    assert isinstance(exporter, OnnxExporter) and exporter.formats == ("gpt-simple",)
    assert exporter.missing_dependencies() == []


IMPORT_SCRIPT = """
import json, sys
import gpt_simple_onnx.plugin
from gpt_simple_core.cli.main import main
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime", "onnx"))
print(json.dumps(heavy))
"""


def test_importing_the_plugin_imports_no_runtime() -> None:
    env = {"PATH": "", "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'backends'}"}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(result.stdout) == []


def test_detection_claims_export_folders_only(
    exported: Exported, checkpoints: dict[str, CheckpointInfo], tmp_path: Path
) -> None:
    folder = exported("default").path
    assert plugin.gpt_simple_inspect_checkpoint(folder, None, True).format == "onnx"
    gpt_simple_checkpoint = checkpoints["default"].path
    assert plugin.gpt_simple_inspect_checkpoint(gpt_simple_checkpoint, None, True) is None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    assert plugin.gpt_simple_inspect_checkpoint(foreign, None, True) is None
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "manifest.json").write_text(
        json.dumps({"format": layout.FORMAT_TAG, "format_version": 99})
    )
    with pytest.raises(CheckpointError, match="layout version 99"):
        plugin.gpt_simple_inspect_checkpoint(newer, None, True)


def problems(info: CheckpointInfo, **request: object) -> tuple[str, ...]:
    found = preflight_of(OnnxBackend(), info, LoadRequest(**request))
    return tuple(p.message for p in found.problems)


def test_preflight_rejects_what_onnx_runtime_cannot_run(
    exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = exported("default")
    assert problems(info) == () and problems(info, device="cpu", dtype="fp32") == ()
    (bf16,) = problems(info, dtype="bf16")
    assert "cannot run dtype bf16" in bf16 and "no bf16 kernels" in bf16
    assert "--dtype fp32" in bf16 and "--backend torch" in bf16
    (cuda,) = problems(info, device="cuda")
    assert "needs onnxruntime-gpu" in cuda and "[onnx-gpu]" in cuda and "--backend torch" in cuda
    (mps,) = problems(info, device="mps")
    assert "cannot run on mps" in mps and "--backend torch runs on more devices" in mps
    (fp16,) = problems(info, dtype="fp16")
    assert "fp32 export" in fp16 and "--dtype fp16" in fp16
    (truncate,) = problems(info, context_overflow="truncate")
    assert "torch backend can truncate" in truncate
    monkeypatch.setattr(OnnxBackend, "missing_dependencies", lambda self: ["onnxruntime"])
    (missing,) = problems(info)
    assert "needs onnxruntime, which is not installed" in missing
    # registered here as an object, not from a distribution: the hint names the import
    assert missing.endswith("(pip install onnxruntime)")


def test_preflight_of_a_gpt_simple_checkpoint_needs_the_export_extra(
    checkpoints: dict[str, CheckpointInfo], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GPT_SIMPLE_CACHE", str(tmp_path))  # nothing cached here
    info = checkpoints["mqa-relu"]
    assert problems(info) == ()
    monkeypatch.setattr(plugin, "export_missing", lambda: ["onnxscript"])
    (missing,) = problems(info)
    assert "needs onnxscript" in missing and "[export]" in missing
    (fp16_warning,) = OnnxBackend().preflight(info, LoadRequest(dtype="fp16")).warnings
    assert "fp16 on the CPU" in fp16_warning


def test_cuda_with_the_gpu_package_but_no_cuda_provider_fails_clearly(
    exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "ort_distributions", lambda: {"onnxruntime-gpu": "1.32.0"})
    info = exported("default")
    assert problems(info, device="cuda") == ()  # the package is there, as far as metadata says
    with pytest.raises(BackendError, match="needs onnxruntime-gpu"):
        OnnxBackend().load(info, LoadRequest(device="cuda:0"))


def test_threads_spinning_and_notes(exported: Exported) -> None:
    options = runtime.session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    info = exported("default")
    model = OnnxBackend().load(info, LoadRequest())  # auto device, no --threads
    assert isinstance(model, OnnxModel) and (model.device, model.dtype) == ("cpu", "fp32")
    assert model.notes == {
        "provider": "CPUExecutionProvider",
        "threads": usable_cpus(),
        "quantization": None,
        "opset": 20,
        "export": str(info.path),
    }
    assert model.context_length == 128 and model.context_overflow == "extrapolate"
    assert OnnxBackend().load(info, LoadRequest(threads=1)).notes["threads"] == 1


def test_backends_command_shows_providers_and_the_package_conflict(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = cli(capsys, "backends", "--json")
    assert code == 0
    (onnx,) = [b for b in json.loads(out)["backends"] if b["name"] == "onnx"]
    assert "CPUExecutionProvider" in onnx["providers"] and "problem" not in onnx
    assert onnx["formats"] == {"onnx": "auto", "gpt-simple": "explicit"}

    monkeypatch.setattr(runtime, "ort_distributions", lambda: BOTH_PACKAGES)
    code, out, _ = cli(capsys, "backends")
    assert code == 0
    assert "providers: ['" in out and "CPUExecutionProvider" in out
    assert "problem: onnxruntime 1.32.0, onnxruntime-gpu 1.32.0 are installed together" in out
    assert "install exactly one" in out


def test_the_python_api_runs_an_export_folder(exported: Exported) -> None:
    folder = exported("default").path
    model, tokenizer, config = gpt_simple.load_for_inference(folder)  # auto: onnx
    assert isinstance(model, OnnxModel) and config["n_layer"] == 2
    (text,) = gpt_simple.generate(
        model, tokenizer, "The assert statement", max_new_tokens=6, do_sample=False
    )
    assert isinstance(text, str) and text
