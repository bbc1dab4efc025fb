"""A fresh clone runs the whole native suite: its fixtures are in the repository.

The checkout's files (tracked, and untracked ones git does not ignore: what a commit would
hold) are copied into a temporary folder with nothing beside it, and the native suite runs
there with that copy first on the import path. Any skip fails this test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def _checkout_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in listed.decode().split("\0") if name]


@pytest.mark.slow
def test_native_suite_runs_without_skips_in_a_fresh_copy(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.fail("this test needs git and a git checkout (CI runs on one)")
    clone = tmp_path / "clone" / "gpt-simple"  # nothing named shared/ beside it
    for name in _checkout_files():
        source = REPO_ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    assert not clone.parent.joinpath("shared").exists()  # the sibling a checkout may have
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(clone), str(clone / "backends")])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "tests/native",
         "--deselect", "tests/native/test_fresh_clone.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "skipped" not in summary, result.stdout[-4000:]
    assert re.search(r"\d+ passed", summary), summary
