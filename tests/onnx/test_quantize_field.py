"""``model.quantize`` (and ``--quantize``): the ONNX backend exports a gpt-simple checkpoint
with quantized weights once, into the cache, next to its fp32 export; an export folder runs
only as it was quantized; the planner refuses what cannot run before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_onnx import layout
from gpt_simple_onnx.cache import CACHE_ENV
from tests.onnx.conftest import Exported
from tests.onnx.test_cache import ExportSpy
from tests.support.cli import cli, run_batch, write_jsonl

pytestmark = pytest.mark.onnx


def records(path: Path, *quantizations: str | None) -> list[dict]:
    out = []
    for i, quantize in enumerate(quantizations):
        model: dict = {"checkpoint": str(path), "backend": "onnx"}
        if quantize is not None:
            model["quantize"] = quantize
        out.append({"id": f"r{i}", "prompt": "The assert statement", "model": model})
    return out


def test_each_quantization_is_exported_once_and_found_in_the_cache_later(
    checkpoints: dict[str, CheckpointInfo],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # its own: entries are counted
    path = checkpoints["mqa-relu"].path
    rows = records(path, "int8", "int4", "int8")
    flags = ("--greedy", "--max-new-tokens", "4", "--threads", "1")
    code, out, err = run_batch(capsys, tmp_path, rows, *flags)
    assert code == 0, err
    assert [r["id"] for r in out] == ["r0", "r1", "r2"]
    assert [r["meta"]["dtype"] for r in out] == ["int8", "int4", "int8"]
    assert all(r["meta"]["notes"]["export_cache"] == "exported" for r in out)
    entries = {Path(r["meta"]["notes"]["export"]) for r in out}
    assert len(entries) == 2  # one export per quantization, shared by its records
    assert {e.parent for e in entries} == {tmp_path / "cache" / "onnx"}
    for entry in entries:
        manifest = json.loads((entry / layout.MANIFEST_FILE).read_text())
        quantize = manifest["quantization"]
        assert f"-fp32-{quantize}-opset" in entry.name
        assert manifest["quantization_scheme"] == layout.WEIGHT_ONLY[quantize].as_dict()
        assert manifest["cache_key"]["quantization"] == quantize

    spy = ExportSpy(monkeypatch)
    source = write_jsonl(tmp_path / "again.jsonl", rows)
    code, plan, err = cli(capsys, "batch-generate", "--input", str(source), "--dry-run")
    assert code == 0, err
    assert plan.count("ONNX export: cached") == 2 and "weights quantized to int4" in plan
    code, again, err = run_batch(capsys, tmp_path, rows, *flags)
    assert code == 0 and spy.calls == []
    assert [r["completion"] for r in again] == [r["completion"] for r in out]
    assert all(r["meta"]["notes"]["export_cache"] == "cached" for r in again)


def test_an_export_folder_runs_only_as_it_was_quantized(
    exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = exported("default", quantize="int8").path
    rows = records(folder, "int8", None, "int4")
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    code, out, err = cli(capsys, "batch-generate", "--input", str(source), "--dry-run")
    assert code == 2
    assert (
        f"{source}:3: model.quantize: {folder} is an int8 export and runs only as exported; "
        f"for int4, export again with --quantize int4"
    ) in err
    assert "[1] " in out and ":1:" not in err and ":2:" not in err


def test_what_cannot_be_quantized_is_refused_at_plan_time(
    checkpoints: dict[str, CheckpointInfo], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = checkpoints["default"].path
    rows = [
        {"prompt": "a", "model": {"checkpoint": str(path), "quantize": "int4"}},
        {"prompt": "b", "model": {**records(path, "int4")[0]["model"], "dtype": "fp16"}},
        {"prompt": "c", "model": {**records(path, "int4")[0]["model"], "quantize": "int2"}},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    code, _, err = cli(capsys, "batch-generate", "--input", str(source), "--dry-run")
    assert code == 2
    assert (
        f"{source}:1: model.quantize: backend 'torch' cannot quantize weights to int4 (it runs "
        "unquantized weights only); onnx can (model.backend / --backend)"
    ) in err
    assert f"{source}:2: model.quantize: int4 weights are quantized from fp32" in err
    assert (
        f"{source}:3: model.quantize: backend 'onnx' cannot quantize weights to int2 "
        "(it quantizes to int8, int4)"
    ) in err
