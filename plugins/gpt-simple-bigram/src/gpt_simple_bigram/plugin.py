"""The plugin: what gpt-simple loads from the ``gpt_simple`` entry-point group.

Three hooks. ``gpt_simple_register_formats`` names the format, ``gpt_simple_inspect_checkpoint``
claims folders holding ``bigram.json`` and ``gpt_simple_register_backends`` registers
:class:`BigramBackend`, which runs them. Everything comes from ``gpt_simple.plugins``, the
versioned plugin API. Keep this module cheap to import: gpt-simple imports every plugin to plan,
even for a dry-run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpt_simple.plugins import (
    AUTO,
    Backend,
    CheckpointError,
    CheckpointInfo,
    Format,
    LoadedModel,
    LoadRequest,
    hookimpl,
)
from gpt_simple_bigram.model import CHECKPOINT_FILE, CharTokenizer, log_probs

#: The plugin API this plugin was written for (gpt-simple refuses a mismatch, and says so).
GPT_SIMPLE_PLUGIN_API = 1

FORMAT = "bigram"


class BigramModel(LoadedModel):
    """A loaded bigram model. The next token depends only on the last one, so the per-row
    state the core asks us to keep is just each row's last token."""

    def __init__(self, checkpoint: dict[str, Any]) -> None:
        self.tokenizer = CharTokenizer(checkpoint["alphabet"])
        self.dtype = "fp32"
        self.device = "cpu"
        self.context_length = None  # only the last token matters: no context limit
        self.notes = {"order": 2}
        self._log_probs = log_probs(checkpoint)
        self._last: dict[int, int] = {}

    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        self.check_forward_arguments(rows, tokens)  # a caller's mistake reads as one
        for row, new in zip(rows, tokens, strict=True):
            self._last[row] = new[-1]
        return self._log_probs[[self._last[row] for row in rows]]

    def release(self, rows: Sequence[int]) -> None:
        for row in rows:
            self._last.pop(row, None)


class BigramBackend(Backend):
    name = "bigram"
    formats = {FORMAT: AUTO}
    dtypes = ("fp32",)
    devices = ("cpu",)
    requires = ("numpy",)

    def load(self, checkpoint: CheckpointInfo, request: LoadRequest) -> BigramModel:
        assert checkpoint.weights is not None
        return BigramModel(json.loads(checkpoint.weights.read_text(encoding="utf-8")))


@hookimpl
def gpt_simple_register_formats(register: Any) -> None:
    register(Format(FORMAT, "character-bigram checkpoints (a folder with bigram.json)"))


@hookimpl
def gpt_simple_inspect_checkpoint(
    path: Path, tokenizer: Path | None, load_tokenizer: bool
) -> CheckpointInfo | None:
    """Claim a folder with ``bigram.json`` (or that file itself); check it without loading."""
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if file.name != CHECKPOINT_FILE or not file.is_file():
        return None
    try:
        with file.open(encoding="utf-8") as f:
            data = json.load(f)
        vocab = len(data["alphabet"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file}: not a readable bigram checkpoint: {exc}") from None
    return CheckpointInfo(
        format=FORMAT,
        path=file.parent,
        tokenizer=None,
        weights=file,
        param_count=vocab * vocab,
        context_length=None,
        config={"vocab": vocab},
    )


@hookimpl
def gpt_simple_register_backends(register: Any) -> None:
    register(BigramBackend())
