"""Fixtures of the torch backend tests: one thread (2 shared cores), a small tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt_simple_lm_format.tokenizer import HFTokenizer
from tests.support.checkpoints import small_config, write_tokenizer


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # The suite shares 2 cores with other work; more threads would only contend.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> HFTokenizer:
    return HFTokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def vocab_tokens(tokenizer: HFTokenizer) -> int:
    """The tokenizer's full size (what ``small_config`` rounds up to the model vocab)."""
    return len(tokenizer)


@pytest.fixture
def config(vocab_tokens: int):
    return small_config(vocab_tokens)
