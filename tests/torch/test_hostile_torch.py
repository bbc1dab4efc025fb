"""Faults on the torch backend (issue 19): a record too long for memory fails alone, the KV
cache is sized from what rows reach (not from ``max_new_tokens``), a device that does not
exist is a plan problem."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from gpt_simple_core.engine.capacity import RESERVE_NEW_TOKENS
from tests.support.checkpoints import write_checkpoint
from tests.support.cli import read_jsonl, subprocess_env, write_jsonl

pytestmark = pytest.mark.torch


def torch_env() -> dict[str, str]:
    """A subprocess CLI environment with the torch backend (entry point) loaded."""
    return subprocess_env(GPT_SIMPLE_PLUGINS="torch")


#: Runs the CLI and reports the process's peak memory on its last stderr line.
PEAK_REPORTING_MAIN = (
    "import resource, sys\n"
    "from gpt_simple_core.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print('peak-kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_measured(*argv: str, cwd) -> tuple[int, str, int]:
    result = subprocess.run(
        [sys.executable, "-c", PEAK_REPORTING_MAIN, *argv],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        env=torch_env(),
    )  # fmt: skip
    peak = [line for line in result.stderr.splitlines() if line.startswith("peak-kb ")]
    return result.returncode, result.stderr, int(peak[-1].split()[1]) if peak else 0


def test_records_too_long_for_memory_fail_alone(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "The try", "generation": {"max_new_tokens": 4, "greedy": True}},
            {"prompt": "The try", "generation": {"max_new_tokens": 100_000_000}},
            {"prompt": "The try", "generation": {"max_new_tokens": 10**32}},
            {"prompt": "for each", "generation": {"max_new_tokens": 4, "greedy": True}},
        ],
    )
    out = tmp_path / "out.jsonl"
    code, err, peak_kb = run_measured(
        "batch-generate", "--input", str(source), "--checkpoint", str(ckpt), "--output",
        str(out), cwd=tmp_path,
    )  # fmt: skip
    assert code == 1, err
    records = read_jsonl(out)
    assert [("error" in r) for r in records] == [False, True, True, False]
    assert "KV cache for one row" in records[1]["error"]["message"]
    assert records[0]["completion"] and records[3]["completion"]
    assert "Traceback" not in err
    assert peak_kb < 1_500_000  # no 460 GB attempt; the process stays small


def test_the_cache_follows_the_row_not_max_new_tokens(tmp_path):
    """A record allowed a million tokens that stops after one costs a cache for one: fast, and
    small (a cache sized for max_new_tokens took 9 GB and 32 s)."""
    ckpt = write_checkpoint(tmp_path / "c")
    probe = write_jsonl(tmp_path / "probe.jsonl", [{"prompt": "The try"}])
    first = subprocess.run(
        [sys.executable, "-m", "gpt_simple_core.cli.main", "batch-generate", "--input",
         str(probe), "--checkpoint", str(ckpt), "--greedy", "--max-new-tokens", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=torch_env(),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    token = json.loads(first.stdout)["completion"]
    assert token
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"prompt": "The try", "generation": {"max_new_tokens": 1_000_000, "stop": [token]}}],
    )
    started = time.monotonic()
    code, err, peak_kb = run_measured(
        "batch-generate", "--input", str(source), "--checkpoint", str(ckpt), "--greedy",
        "--output", str(tmp_path / "out.jsonl"), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert time.monotonic() - started < 60
    assert read_jsonl(tmp_path / "out.jsonl")[0]["completion"] == ""
    (reserved,) = re.findall(r"reserved_tokens_per_row=(\d+)", err)
    assert int(reserved) < 2 * RESERVE_NEW_TOKENS  # the prompt + 1024, not a million
    assert peak_kb < 1_500_000


def test_a_device_that_does_not_exist_is_a_plan_problem(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    result = subprocess.run(
        [sys.executable, "-m", "gpt_simple_core.cli.main", "batch-generate", "--input",
         str(source), "--checkpoint", str(ckpt), "--device", "cuda:99"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=torch_env(),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cuda:99" in result.stderr and "nothing was loaded" in result.stderr
    assert "AssertionError" not in result.stderr and "Traceback" not in result.stderr
