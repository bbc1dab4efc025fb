"""What every tool runs on: random-weight checkpoints in the gpt-simple layout, a synthetic
tokenizer, and the same records for all.

The tokenizer is a word-level ``tokenizers`` model over synthetic words (``w0``, ``w1``, ...)
plus the trainer's ``<|endoftext|>`` and ``<|pad|>``: a prompt of N words is exactly N tokens
for every tool, and nothing comes from the hub. Weights are written once per shape and seed
under ``benchmarks/work/`` and reused by later runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_lm_format.config import ModelConfig
from tests.support.checkpoints import random_state_dict, tokenizer_vocab_size, write_checkpoint

WORK = Path(__file__).resolve().parent / "work"
EOS = "<|endoftext|>"
PAD = "<|pad|>"


@attrs.frozen
class Shape:
    """A model shape; ``tokenizer_size`` counts the synthetic words plus EOS and PAD."""

    name: str
    n_embd: int
    n_layer: int
    n_head: int
    tokenizer_size: int
    n_positions: int = 1024

    def config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=tokenizer_vocab_size(self.tokenizer_size),
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_positions=self.n_positions,
        )


# GPT-2-small shape: 124M parameters, vocab 50258 rounded up to 50304 (GPT-2's own padding).
GPT2_SMALL = Shape("gpt2-small", n_embd=768, n_layer=12, n_head=12, tokenizer_size=50258)
# The sweep's mid-size model: ~31M parameters, so a 512-record sweep stays short.
MID = Shape("mid", n_embd=512, n_layer=8, n_head=8, tokenizer_size=8000)
# The pre-flight scenario only plans: a tiny model per checkpoint is enough.
TINY = Shape("tiny", n_embd=64, n_layer=2, n_head=4, tokenizer_size=1000)


def write_word_tokenizer(folder: Path, size: int) -> None:
    """``folder/tokenizer.json``: ``size - 2`` words, then EOS and PAD (special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size - 2)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece's decoder with an unused prefix joins tokens with spaces, like the input text.
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.add_special_tokens([EOS, PAD])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"eos_token": EOS, "pad_token": PAD}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def builtin_checkpoint() -> Path:
    """The embedded default model: small, but trained, so greedy agreement means something."""
    from gpt_simple_core.checkpoints.resolve import builtin_models_dir

    return builtin_models_dir() / "default"


def checkpoint(shape: Shape, seed: int = 0) -> Path:
    """The checkpoint folder of ``shape`` with weights from ``seed`` (written on first use)."""
    folder = WORK / "checkpoints" / f"{shape.name}-s{seed}"
    if (folder / "model" / "model.safetensors").is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    config = shape.config()
    write_word_tokenizer(partial / "tokenizer", shape.tokenizer_size)
    write_checkpoint(
        partial,
        config,
        tokenizer=False,
        weights=random_state_dict(config, seed=seed),
        step=seed,
    )
    partial.rename(folder)
    return folder


def weight_bytes(folder: Path) -> int:
    return (folder / "model" / "model.safetensors").stat().st_size


def prompt_text(rng: random.Random, words: int, tokenizer_size: int) -> str:
    """``words`` random synthetic words: exactly that many tokens."""
    return " ".join(f"w{rng.randrange(1, tokenizer_size - 2)}" for _ in range(words))


def sweep_records(
    count: int,
    *,
    tokenizer_size: int,
    seed: int = 1234,
    prompt_tokens: tuple[int, int] = (8, 128),
    new_tokens: tuple[int, int] = (16, 128),
    checkpoints: list[str] | None = None,
) -> list[dict[str, Any]]:
    """An eval sweep: mixed prompt lengths and ``max_new_tokens``, seeded sampling,
    ``ignore_eos`` (every tool does the same work). With ``checkpoints``, record i names
    ``checkpoints[i % len]`` (interleaved)."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        record: dict[str, Any] = {
            "id": i,
            "prompt": prompt_text(rng, rng.randint(*prompt_tokens), tokenizer_size),
        }
        if checkpoints:
            record["model"] = {"checkpoint": checkpoints[i % len(checkpoints)]}
        record["generation"] = {
            "max_new_tokens": rng.randint(*new_tokens),
            "temperature": 0.8,
            "top_k": 50,
            "top_p": 0.95,
            "seed": 1000 + i,
            "ignore_eos": True,
        }
        records.append(record)
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return path
