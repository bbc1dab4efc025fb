"""Shared fixtures. Test support code lives in ``tests/support``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
NATIVE_REFERENCE = SHARED / "testdata" / "native_reference"


@pytest.fixture(scope="session")
def native_reference() -> Path:
    """The HipGPT ground-truth fixtures; under CI a missing fixture fails instead of skipping."""
    if not NATIVE_REFERENCE.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"fixture folder {NATIVE_REFERENCE} is missing under CI")
        pytest.skip(f"fixture folder {NATIVE_REFERENCE} is missing")
    return NATIVE_REFERENCE
