"""A fresh virtualenv with gpt-simple and two third-party plugins installed from their own
folders, as a user would install them: the template (``plugins/gpt-simple-bigram``) and the
test plugin ``tests/fixtures/plugins/gpt-simple-fake`` (new dtypes, devices and options)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO_ROOT

TEMPLATE = REPO_ROOT / "plugins" / "gpt-simple-bigram"
FAKE = FIXTURES / "plugins" / "gpt-simple-fake"


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, **kwargs
    )


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh-venv")
    created = run(sys.executable, "-m", "venv", root / "venv")
    assert created.returncode == 0, created.stderr
    pip = root / "venv" / "bin" / "pip"
    installed = run(
        pip, "install", "--quiet", "-c", REPO_ROOT / "constraints.txt", REPO_ROOT, TEMPLATE, FAKE
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return root / "venv"
