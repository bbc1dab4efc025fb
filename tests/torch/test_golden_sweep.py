"""Output bytes of a fixed mixed sweep stay what they were when the engine was first refactored.

``tests/fixtures/golden/mixed_sweep.jsonl`` mixes the builtin model (torch: greedy, seeded
top-k/top-p, min-p, a stop string, a repetition penalty, a derived seed, full text) and the
HipGPT fixture (native: greedy, stop token ids, a prompt without tokens, which is a soft
error), interleaved so the spool is used. ``mixed_sweep.out.jsonl`` is what commit 809b7a0
(before the Session refactor) wrote, with machine paths replaced by placeholders. Regenerate
it only for an intended change of output, with the command in :func:`run_sweep`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_simple_core.checkpoints.resolve import builtin_models_dir
from tests.conftest import FIXTURES
from tests.support.cli import cli

GOLDEN = FIXTURES / "golden"


def normalise(text: str) -> str:
    """Machine-specific absolute paths -> placeholders."""
    return text.replace(str(builtin_models_dir()), "<builtin>").replace(str(FIXTURES), "<fixtures>")


def run_sweep(capsys: pytest.CaptureFixture[str], output: Path) -> int:
    """``FIXTURES=tests/fixtures gpt-simple batch-generate --input mixed_sweep.jsonl
    --seed 42 --threads 1 --checkpoint builtin:default``."""
    code, out, _ = cli(
        capsys,
        "batch-generate",
        "--input",
        str(GOLDEN / "mixed_sweep.jsonl"),
        "--output",
        str(output),
        "--seed",
        "42",
        "--threads",
        "1",
        "--checkpoint",
        "builtin:default",
    )
    assert out == ""
    return code


def test_mixed_sweep_output_is_byte_identical(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIXTURES", str(FIXTURES))
    output = tmp_path / "out.jsonl"
    assert run_sweep(capsys, output) == 1  # one record (a prompt without tokens) fails
    expected = (GOLDEN / "mixed_sweep.out.jsonl").read_text(encoding="utf-8")
    got = normalise(output.read_text(encoding="utf-8"))
    assert got.splitlines() == expected.splitlines()
    assert got == expected
