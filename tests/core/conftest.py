"""Fixtures of the core suite: no entry-point plugin loads (only the gpt-simple-lm format plugin
is registered, as an object), logs go to the current stderr, the working directory is a fresh
temporary folder, and the toy backend is one fixture away."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from gpt_simple_core import logs, registry
from gpt_simple_lm_format import plugin as lm_format_plugin
from tests.support import plugins
from tests.support.toy_backend import ToyBackend, register_toy_plugin, write_toy_checkpoint


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(registry.PINS_ENV_VAR, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    logs.configure()  # to whatever sys.stderr is when a line is written (pytest swaps it)
    plugins.reset()
    plugins.add_plugin(lm_format_plugin)  # gpt-simple checkpoints, as installed
    yield
    plugins.reset()
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


@pytest.fixture(params=["byte-bpe", "words"])
def tokenizer(request: pytest.FixtureRequest, tmp_path: Path):
    """A byte-level BPE and a word-level tokenizer over :data:`TEXTS`, in turn (the streaming
    and stop-string tests decode with both)."""
    from gpt_simple_lm_format.tokenizer import HFTokenizer
    from tests.core.helpers import TEXTS, word_tokenizer
    from tests.support.checkpoints import write_tokenizer

    if request.param == "byte-bpe":
        write_tokenizer(tmp_path / "bpe")
        return HFTokenizer(tmp_path / "bpe")
    words = sorted({w for text in TEXTS for w in text.split()})
    return HFTokenizer(word_tokenizer(tmp_path / "words", words, ["<|endoftext|>"]))
