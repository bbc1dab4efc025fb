"""``scripts/gpu-check --dry`` (issue 17): on a CPU machine it lists what it would check,
collects the CUDA tests (skipped here, with their reason), and runs the benchmark code at a
tiny scale on the CPU, writing the report a GPU run writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.support.cli import subprocess_env

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_the_dry_mode_runs_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gpu-check"), "--dry", "--out", str(out),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env=subprocess_env(GPT_SIMPLE_PLUGINS="torch"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry"] and len(report["steps"]) == 5
    assert "6 tests collected" in report["cuda_tests"]["summary"]
    bench = report["benchmark"]
    assert bench["device"] == "cpu" and bench["batch1"][0]["tok_s"] > 0
    assert bench["sweep"]["ours"]["tok_s"] > 0 and bench["sweep"]["transformers"]["tok_s"] > 0
    markdown = (out / "gpu-report.md").read_text()
    assert "| batch-1 decode |" in markdown and "Sweep of 16 records" in markdown
    assert "dry: CPU, tiny scale, no GPU figure" in result.stdout
