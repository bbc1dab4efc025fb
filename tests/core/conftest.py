"""Fixtures of the core suite: no entry-point plugin loads, logs go to the current stderr,
the working directory is a fresh temporary folder, and the toy backend is one fixture away."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import structlog

from gpt_simple_core import logs, plugin_manager
from tests.support.toy_backend import ToyBackend, register_toy_plugin, write_toy_checkpoint


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (pytest swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(plugin_manager.PINS_ENV_VAR, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    logs.configure()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()))
    plugin_manager.reset_plugin_manager()
    yield
    plugin_manager.reset_plugin_manager()
    structlog.reset_defaults()


@pytest.fixture
def toy() -> type[ToyBackend]:
    """The toy backend, registered; ``ToyBackend.loaded`` lists the models it loaded."""
    register_toy_plugin()
    ToyBackend.loaded.clear()
    yield ToyBackend
    ToyBackend.loaded.clear()


@pytest.fixture
def toy_ckpt(tmp_path: Path, toy) -> Path:
    """A plain toy checkpoint (no knobs)."""
    return write_toy_checkpoint(tmp_path / "toy")
