"""Shared fixtures. Support code lives in ``tests/support``; test data in ``tests/fixtures``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
NATIVE_REFERENCE = FIXTURES / "native_reference"
#: Every file the native suite reads; a missing one fails the run (never a skip).
NATIVE_REFERENCE_FILES = (
    "data.txt",
    "tokenizer.json",
    "tokens.bin",
    "gpt_checkpoint.bin",
    "expected_outputs.json",
    *(f"logits_prompt{n}.f32" for n in range(1, 6)),
    "seq1536/gpt_checkpoint_seq1536.bin",
    "seq1536/logits_prompt1_rows1408-1535.f32",
)


@pytest.fixture(scope="session")
def native_reference() -> Path:
    """The HipGPT ground-truth fixtures committed in ``tests/fixtures/native_reference``."""
    missing = [name for name in NATIVE_REFERENCE_FILES if not (NATIVE_REFERENCE / name).is_file()]
    if missing:
        pytest.fail(f"fixture files missing from {NATIVE_REFERENCE}: {', '.join(missing)}")
    return NATIVE_REFERENCE
