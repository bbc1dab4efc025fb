"""A small deterministic backend the test suite registers itself (format ``toy``).

A toy checkpoint is a folder with ``toy.json``. Its tokenizer maps each character of a fixed
alphabet to one id, plus EOS and PAD; the logits are wider than the tokenizer (a padding band).
The model's logits are a pseudo-random function of each row's own history (so batching must not
matter), plus a bonus on the next character of an optional ``script`` (so tests can steer text).
Knobs in ``toy.json``: ``script`` (str), ``script_bonus`` (float), ``eos_after`` (emit EOS after
that many generated tokens), ``fail_load`` (bool), ``poison`` (a character whose presence in a
row's history makes forward raise), ``delay`` (seconds per forward call; ``$TOY_DELAY`` overrides
it without changing the checkpoint, so slow runs and fast ones write the same output),
``context`` (int).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from gpt_simple.plugins import (
    AUTO,
    OVERFLOW_EXTRAPOLATE,
    Backend,
    CheckpointInfo,
    LoadedModel,
    LoadRequest,
    hookimpl,
)

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"
EOS_ID = len(ALPHABET)
PAD_ID = EOS_ID + 1
TOKENIZER_SIZE = PAD_ID + 1
LOGITS_WIDTH = 40  # > TOKENIZER_SIZE: ids 34..39 are the padding band


class ToyTokenizer:
    eos_token_id = EOS_ID
    pad_token_id = PAD_ID
    never_generate = (PAD_ID,)

    def __init__(self) -> None:
        self.prompts: set[tuple[int, ...]] = set()  # every encoded prompt, see ToyModel

    def encode(self, text: str) -> list[int]:
        ids = [ALPHABET.index(c) for c in text.lower() if c in ALPHABET]
        self.prompts.add(tuple(ids))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        special = {EOS_ID: "<eos>", PAD_ID: "<pad>"}
        return "".join(ALPHABET[i] if i < len(ALPHABET) else special.get(i, "") for i in ids)

    def __len__(self) -> int:
        return TOKENIZER_SIZE


def write_toy_checkpoint(folder: Path, **settings: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


def _noise(history: tuple[int, ...]) -> np.ndarray:
    digest = hashlib.blake2b(repr((*history[-4:], len(history))).encode(), digest_size=8)
    rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
    return rng.normal(0.0, 2.0, LOGITS_WIDTH).astype(np.float32)


class ToyModel(LoadedModel):
    def __init__(self, settings: dict[str, Any], request: LoadRequest) -> None:
        self.settings = settings
        self.tokenizer = ToyTokenizer()
        self.dtype = "fp32" if request.dtype == "auto" else request.dtype
        self.quantize = request.quantize  # what the planner passed on (model.quantize)
        self.device = "cpu"
        self.context_length = settings.get("context")
        self.context_overflow = settings.get("overflow", OVERFLOW_EXTRAPOLATE)
        # memory knobs, for the tests of bounded rows: bytes a token of a row costs, the budget
        self.kv_bytes_per_token = settings.get("kv_bytes")
        self.memory_budget = settings.get("budget")
        self.reserved: list[tuple[int, int]] = []  # (slots, row length) of every reserve()
        self.notes = {"toy": True}
        self.rows: dict[int, list[int]] = {}
        self.prompt_lengths: dict[int, int] = {}
        self.calls: list[list[int]] = []  # rows of every forward call, for tests
        self.closed = False

    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        self.calls.append(list(rows))
        delay = float(os.environ.get("TOY_DELAY") or self.settings.get("delay") or 0)
        if delay:
            time.sleep(delay)
        poison = self.settings.get("poison")
        out = np.empty((len(rows), LOGITS_WIDTH), dtype=np.float32)
        for i, (row, new) in enumerate(zip(rows, tokens, strict=True)):
            history = self.rows.setdefault(row, [])
            if not history:
                self.prompt_lengths[row] = len(new)
            history.extend(new)
            if poison is not None and ALPHABET.index(poison) in history:
                raise RuntimeError(f"poisoned row {row}")
            out[i] = self._logits(row, tuple(history))
        return out

    def _logits(self, row: int, history: tuple[int, ...]) -> np.ndarray:
        logits = _noise(history)
        generated = len(history) - self._prompt_length(row, history)
        if self.settings.get("eos_after") is not None and generated >= self.settings["eos_after"]:
            logits[EOS_ID] += 100.0
        script = self.settings.get("script")
        if script:
            logits[ALPHABET.index(script[generated % len(script)])] += self.settings.get(
                "script_bonus", 50.0
            )
        logits[TOKENIZER_SIZE:] += 1000.0  # the padding band must be masked by the core
        return logits

    def _prompt_length(self, row: int, history: tuple[int, ...]) -> int:
        """Where the prompt ends, for ``script`` and ``eos_after``: the longest encoded prompt
        that starts the history. A row's first call is not enough: the core may prefill in
        chunks, or replay a row from its full history (prompt + generated) after a failure.
        Falls back to the first call's length for rows fed without ``tokenizer.encode``."""
        known = [len(p) for p in self.tokenizer.prompts if history[: len(p)] == p]
        return max(known) if known else self.prompt_lengths[row]

    def reserve(self, slots: int, max_length: int) -> None:
        self.reserved.append((slots, max_length))

    def release(self, rows: Sequence[int]) -> None:
        for row in rows:
            self.rows.pop(row, None)
            self.prompt_lengths.pop(row, None)

    def close(self) -> None:
        self.closed = True


class ToyBackend(Backend):
    name = "toy"
    formats = {"toy": AUTO}
    dtypes = ("fp32", "fp16")
    devices = ("cpu",)
    loaded: list[ToyModel] = []

    def resolve(self, request: LoadRequest) -> LoadRequest:
        """``auto`` is fp32 on cpu, as ``load`` runs it (so the core can merge groups)."""
        return attrs.evolve(
            request,
            dtype="fp32" if request.dtype == AUTO else request.dtype,
            device="cpu" if request.device.is_auto else request.device,
        )

    def load(self, checkpoint: CheckpointInfo, request: LoadRequest) -> ToyModel:
        if checkpoint.config.get("fail_load"):
            raise RuntimeError("toy checkpoint refuses to load")
        model = ToyModel(dict(checkpoint.config), request)
        ToyBackend.loaded.append(model)
        return model


class ToyPlugin:
    """The toy format and backend, as a plugin object (:func:`register_toy_plugin`)."""

    GPT_SIMPLE_PLUGIN_API = 1

    @hookimpl
    def gpt_simple_register_backends(self, register: Any) -> None:
        register(ToyBackend())

    @hookimpl
    def gpt_simple_inspect_checkpoint(
        self, path: Path, tokenizer: Path | None, load_tokenizer: bool
    ) -> CheckpointInfo | None:
        config_file = path / "toy.json"
        if not config_file.is_file():
            return None
        settings = json.loads(config_file.read_text(encoding="utf-8"))
        return CheckpointInfo(
            format="toy",
            path=path,
            tokenizer=None,
            weights=config_file,
            param_count=LOGITS_WIDTH,
            context_length=settings.get("context"),
            eos_id=EOS_ID,
            config=settings,
            kv_values_per_token=(settings.get("kv_bytes") or 0) // 4 or None,
        )


TOY_PLUGIN = ToyPlugin()


def register_toy_plugin() -> None:
    """Add the toy plugin to the test's registry (:mod:`tests.support.plugins`)."""
    from tests.support.plugins import add_plugin

    add_plugin(TOY_PLUGIN)
