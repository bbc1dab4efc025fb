"""Helpers of the core tests (the CLI runners live in :mod:`tests.support.cli`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from tokenizers import Tokenizer as HF
from tokenizers import models, pre_tokenizers

from gpt_simple.plugins import AUTO, Backend, hookimpl
from gpt_simple_core.records.schema import GenerationParams
from gpt_simple_core.registry import Registry
from tests.support.cli import (  # noqa: F401 - the core tests import them from here
    REPO_ROOT,
    cli,
    read_jsonl,
    run_batch,
    run_toy_cli,
    subprocess_env,
    toy_cli_command,
    write_jsonl,
)


class PlanOnlyBackend(Backend):
    """Claims gpt-simple checkpoints for planning; loading is not its business."""

    name = "plan-only"
    formats = {"gpt-simple": AUTO}
    dtypes = ("fp32", "fp16", "bf16")
    devices = ("cpu",)

    def load(self, checkpoint: Any, request: Any) -> Any:
        raise RuntimeError("plan-only backend cannot load")


class _BackendsPlugin:
    GPT_SIMPLE_PLUGIN_API = 1

    def __init__(self, backends: Sequence[Backend], name: str) -> None:
        self.backends = backends
        self.__name__ = name

    @hookimpl
    def gpt_simple_register_backends(self, register: Any) -> None:
        for backend in self.backends:
            register(backend)


def registry_of(*backends: Backend, errors: dict[str, str] | None = None) -> Registry:
    """A registry holding exactly ``backends`` and the gpt-simple-lm format (no entry points)."""
    from gpt_simple_lm_format import plugin as lm_format_plugin

    registry = Registry.discover(
        pins=(), extra_plugins=[lm_format_plugin, _BackendsPlugin(backends, "registry-of")]
    )
    if errors:
        registry = attrs.evolve(registry, plugin_errors={**registry.plugin_errors, **errors})
    return registry


def register_backends(*backends: Backend, name: str = "test-backends") -> Registry:
    """Register backend instances as a plugin of the test's registry (returned)."""
    from tests.support.plugins import add_plugin

    return add_plugin(_BackendsPlugin(backends, name))


def generation_params(**overrides: Any) -> GenerationParams:
    """Resolved sampling parameters: plain sampling (no top-k/top-p/min-p), seed 0."""
    values = {
        "max_new_tokens": 10,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "greedy": False,
        "repetition_penalty": 1.0,
        "seed": 0,
        "return_full_text": False,
        "stop": (),
        "stop_token_ids": (),
        "ignore_eos": False,
    }
    values.update(overrides)
    return GenerationParams(**values)


def word_tokenizer(folder: Path, words: list[str], special: list[str], **side_files) -> Path:
    """A word-level tokenizer with ``special`` added as special tokens, plus side files."""
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tokenizer = HF(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(special)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    for name, content in side_files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return folder


#: Texts the tokenizer-level tests decode: ASCII, multi-byte characters, repeats.
TEXTS = [
    "The try statement specifies exception handlers. for each item in the list",
    "naïve café — 日本語のテキスト, and an emoji 🙂🙃 between words 🙂!",
    "aaaa aaaa aaab a a a ab ab abab",
]
