"""JSONL files and the ``gpt-simple`` command line run in this process (any test suite)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gpt_simple_core.cli.main import main


def write_jsonl(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    """One line per item: dicts are dumped, strings are written as they are."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``gpt-simple ARGV`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
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
