"""Builders of tiny gpt-simple checkpoints and run directories for tests (numpy only, no torch).

Weights are random but seeded; the tokenizer is a small byte-level BPE trained on a fixed text
with the trainer's ``<|endoftext|>`` and ``<|pad|>`` tokens, so ``vocab_size`` is its size
rounded up to 128 and the padding band is real.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gpt_simple_lm_format.config import ModelConfig

TRAINING_TEXT = (
    "The assert statement is a convenient way to insert debugging assertions into a program. "
    "The try statement specifies exception handlers and cleanup code for a group of statements. "
    "for each item in the list the loop body is executed once, and the target is assigned. "
    "An exception is raised when an error is detected; it can be handled by the surrounding "
    "code or by the caller. Objects are Python's abstraction for data. "
) * 4

# A weight scale large enough that attention is peaked (scores of several units), so RoPE and
# masking mistakes change the logits visibly; the default 0.02 leaves attention near uniform.
PEAKED_SCALE = 0.2


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TRAINING_TEXT], trainer=trainer)
    tokenizer.add_special_tokens(["<|pad|>"])
    return tokenizer.to_str()


def write_tokenizer(folder: Path, *, vocab_size: int = 300, pad: bool = True) -> int:
    """Write ``folder/tokenizer.json`` (+ tokenizer_config.json); return the full size."""
    from tokenizers import Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_str(_tokenizer_json(vocab_size))
    (folder / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    config = {"eos_token": "<|endoftext|>"}
    if pad:
        config["pad_token"] = "<|pad|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tokenizer.get_vocab_size(with_added_tokens=True)


def tokenizer_vocab_size(tokenizer_size: int) -> int:
    """The trainer's rule: the model's vocab is the tokenizer size rounded up to 128."""
    return 128 * math.ceil(tokenizer_size / 128)


def random_state_dict(config: ModelConfig, seed: int = 0, scale: float = 0.02) -> dict:
    """Seeded random float32 weights for every key the config implies (norm weights near 1)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in config.state_dict_shapes().items():
        if "ln_" in key:  # norm gains near 1, norm biases near 0
            base = 1.0 if key.endswith("weight") else 0.0
            weights[key] = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[key] = (scale * rng.standard_normal(shape)).astype(np.float32)
    return weights


def small_config(tokenizer_size: int, **overrides: Any) -> ModelConfig:
    """A tiny config (2 layers, 64 wide) with the tokenizer's vocab rounded up to 128."""
    values: dict[str, Any] = {
        "vocab_size": tokenizer_vocab_size(tokenizer_size),
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 128,
    }
    values.update(overrides)
    return ModelConfig(**values)


def write_checkpoint(
    folder: Path,
    config: ModelConfig | None = None,
    *,
    step: int | None = 100,
    weights: Mapping[str, np.ndarray] | None = None,
    weights_format: str = "safetensors",
    tokenizer: bool = True,
    trainer_state: Mapping[str, Any] | str | None = None,
    seed: int = 0,
) -> Path:
    """Write a checkpoint directory (``model/config.json`` + weights [+ tokenizer, state]).

    ``weights_format`` is ``safetensors`` (numpy writer) or ``bin`` (needs torch).
    ``trainer_state`` may be raw text, to write things like a bare ``Infinity``.
    """
    size = write_tokenizer(folder / "tokenizer") if tokenizer else 300
    config = config or small_config(size)
    model = folder / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    weights = dict(weights) if weights is not None else random_state_dict(config, seed)
    if weights_format == "safetensors":
        from safetensors.numpy import save_file

        save_file(dict(weights), str(model / "model.safetensors"))
    else:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
        torch.save(tensors, model / "pytorch_model.bin")
    if trainer_state is None and step is not None:
        trainer_state = {"schema_version": 1, "step": step, "best_loss": float("inf")}
    if trainer_state is not None:
        text = trainer_state if isinstance(trainer_state, str) else json.dumps(trainer_state)
        (folder / "trainer_state.json").write_text(text, encoding="utf-8")
    return folder


def write_run_dir(root: Path, steps: Mapping[str, int | None], **kwargs: Any) -> Path:
    """A run directory whose ``checkpoints/<name>`` have the given steps (None: no state).

    The tokenizer lives at the run root, as the trainer saves it.
    """
    size = write_tokenizer(root / "tokenizer")
    config = kwargs.pop("config", None) or small_config(size)
    (root / "config.json").write_text(json.dumps({"model": config.to_dict()}), encoding="utf-8")
    for name, step in steps.items():
        write_checkpoint(root / "checkpoints" / name, config, step=step, tokenizer=False, **kwargs)
    return root
