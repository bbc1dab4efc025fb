"""Running the ``gpt-simple`` CLI from tests: in this process, or in a subprocess with this
checkout importable (optionally with the toy backend registered)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gpt_simple_core.cli.main import main
from tests.support.plugins import current

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    """One line per item: dicts are dumped, strings are written as they are."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``gpt-simple ARGV`` in this process, with the test's plugins (exit status, stdout,
    stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv), registry=current())
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_batch(
    capsys: pytest.CaptureFixture[str], folder: Path, records: Iterable[dict | str], *flags: str
) -> tuple[int, list[dict[str, Any]], str]:
    """``batch-generate`` over ``records`` in this process, output to a file:
    (exit status, output records, stderr). Nothing may reach stdout."""
    source = write_jsonl(folder / "in.jsonl", records)
    output = folder / "out.jsonl"
    output.unlink(missing_ok=True)
    code, out, err = cli(
        capsys, "batch-generate", "--input", str(source), "--output", str(output), *flags
    )
    assert out == ""
    return code, (read_jsonl(output) if output.exists() else []), err


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess CLI run: this checkout importable, no entry points."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "backends")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        GPT_SIMPLE_PLUGINS="",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def toy_cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.toy_cli", *argv]


def run_toy_cli(
    argv: Sequence[str], *, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """``gpt-simple ARGV`` with the toy backend, in a subprocess."""
    return subprocess.run(
        toy_cli_command(*argv),
        cwd=cwd,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
