"""The embedded default model (``builtin:default``) loads and writes documentation prose."""

from __future__ import annotations

import re

import pytest

from gpt_simple_core.protocol import LoadRequest
from gpt_simple_lm_format import layout as gpt_simple_layout
from gpt_simple_torch.plugin import TorchBackend
from tests.conftest import REPO_ROOT
from tests.support.near_ties import greedy

pytestmark = pytest.mark.torch

REFERENCE_WORDS = {
    "statement", "clause", "block", "executed", "expression", "scope", "suite", "defined",
    "exception", "function", "value", "object", "name", "evaluated", "assignment", "loop",
}  # fmt: skip
BUILTIN = REPO_ROOT / "gpt_simple_core" / "builtin_models" / "default"


def test_builtin_default_model_continues_python_documentation() -> None:
    info = gpt_simple_layout.inspect(BUILTIN, None, load_tokenizer=True)
    assert info.weights.stat().st_size <= 15_000_000  # the package-size budget
    assert info.warnings == ()  # EOS present, vocab_size = tokenizer size rounded to 128
    model = TorchBackend().load(info, LoadRequest(device="cpu", threads=1))
    prompt = model.tokenizer.encode("The assert statement")
    tokens, _ = greedy(model, {0: prompt}, steps=24)
    text = model.tokenizer.decode(tokens[0])
    # The exact words may differ across CPUs; the vocabulary of the reference manual does not.
    assert len(set(re.findall(r"[a-z]+", text.lower())) & REFERENCE_WORDS) >= 3, text
