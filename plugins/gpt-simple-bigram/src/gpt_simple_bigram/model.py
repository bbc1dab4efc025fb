"""The model: a character tokenizer and add-one-smoothed bigram log-probabilities."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CHECKPOINT_FILE = "bigram.json"
EOS = "\x03"  # end of text: one character outside any sensible corpus


class CharTokenizer:
    """One id per character of the training text, plus EOS (implements gpt-simple's Tokenizer)."""

    pad_token_id = None
    never_generate: tuple[int, ...] = ()

    def __init__(self, alphabet: str) -> None:
        self.alphabet = alphabet
        self._ids = {c: i for i, c in enumerate(alphabet)}
        self.eos_token_id = self._ids[EOS]

    def encode(self, text: str) -> list[int]:
        return [self._ids[c] for c in text if c in self._ids]  # unknown characters dropped

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(
            self.alphabet[i] for i in ids if 0 <= i < len(self.alphabet) and i != self.eos_token_id
        )

    def __len__(self) -> int:
        return len(self.alphabet)


def train(text: str) -> dict:
    """Count character bigrams of ``text`` (EOS after the last character)."""
    alphabet = "".join(sorted(set(text) | {EOS}))
    index = {c: i for i, c in enumerate(alphabet)}
    counts = np.zeros((len(alphabet), len(alphabet)), dtype=np.int64)
    ids = [index[c] for c in text + EOS]
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    return {"format": "bigram", "alphabet": alphabet, "counts": counts.tolist()}


def log_probs(checkpoint: dict) -> np.ndarray:
    """[vocab, vocab] float32: log P(next | previous), add-one smoothed."""
    counts = np.asarray(checkpoint["counts"], dtype=np.float64) + 1.0
    return np.log(counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    """``python -m gpt_simple_bigram.train TEXT_FILE OUT_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: python -m gpt_simple_bigram.train TEXT_FILE OUT_DIR")
    out = Path(args[1])
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = train(Path(args[0]).read_text(encoding="utf-8"))
    (out / CHECKPOINT_FILE).write_text(json.dumps(checkpoint), encoding="utf-8")
    print(f"wrote {out / CHECKPOINT_FILE}", file=sys.stderr)
