"""``gpt-simple export`` as a newcomer runs it (issue 16 item 12): no ``--format`` needed with
one exporter installed, each phase logged with its time on stderr, and none of onnxruntime's
quantizer advice (``WARNING:root:Please consider to run pre-processing ...``) leaking out."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_simple_core import logs
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_onnx.export import QUANTIZER_NOISE, quiet_quantizer
from tests.support.cli import subprocess_env

pytestmark = pytest.mark.onnx

PHASES = (
    "loading the weights",
    "tracing the graph",
    "checking the graph",
    "quantizing to int8",
    "measuring the logits drift",
)


def test_an_int8_export_logs_its_phases_and_nothing_of_the_quantizer(
    tmp_path: Path, checkpoints: dict[str, CheckpointInfo]
) -> None:
    out = tmp_path / "int8"
    argv = [sys.executable, "-m", "gpt_simple_core.cli.main", "export"]
    argv += [str(checkpoints["default"].path), "--out", str(out), "--quantize", "int8"]
    result = subprocess.run(
        argv,
        cwd=tmp_path,
        env=subprocess_env(GPT_SIMPLE_PLUGINS="torch,onnx", GPT_SIMPLE_CACHE=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is the summary alone
    assert summary["quantization"] == "int8" and summary["out"] == str(out)
    err = result.stderr
    assert "WARNING:root" not in err and "pre-processing" not in err, err
    assert "format=onnx" in err  # the one exporter installed, named
    for phase in PHASES:
        assert f"export: {phase}" in err, phase
        (done,) = [
            line for line in err.splitlines() if f"export: {phase}" in line and "done" in line
        ]
        assert re.search(r"seconds=\d+(\.\d)?", done), done


def test_the_quantizer_advice_is_dropped_and_other_warnings_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a plain process: nobody configured it
    logs.configure()
    with quiet_quantizer():
        logging.warning(f"Please consider to run {QUANTIZER_NOISE}. Refer to example: ...")
        logging.warning("Quantization parameters for tensor x not specified")
    assert root.handlers == []  # nothing left installed for the rest of the process
    assert root.filters == []
    err = capsys.readouterr().err
    assert "pre-processing" not in err
    assert "Quantization parameters for tensor x not specified" in err
    assert "WARNING:root" not in err
