"""The tokenizer of gpt-simple run directories, with the trainer's semantics.

A folder holding ``tokenizer.json`` (Hugging Face ``tokenizers`` format), read with
``tokenizers.Tokenizer`` exactly as the trainer's ``GPT2TokenizerFast(tokenizer_file=...)``
reads it. EOS is ``<|endoftext|>`` when the vocabulary has it, else the ``eos_token`` of
``tokenizer_config.json`` / ``special_tokens_map.json``; the pad token is never generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt_simple.plugins import TokenizerError, read_json

TOKENIZER_FILE = "tokenizer.json"
GPT2_EOS = "<|endoftext|>"
TRAINER_PAD = "<|pad|>"
_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _token_content(value: Any) -> str | None:
    """Special tokens are stored either as a string or as ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _named_special(folder: Path, key: str) -> str | None:
    for name in _SIDE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"{path}: cannot read: {exc}") from None
        token = _token_content(data.get(key)) if isinstance(data, dict) else None
        if token:
            return token
    return None


def check_tokenizer_folder(folder: Path) -> Path:
    """Return the ``tokenizer.json`` of ``folder`` or raise an error saying what is there."""
    path = folder / TOKENIZER_FILE
    if path.is_file():
        return path
    if folder.is_dir() and any(folder.glob("*.model")):
        raise TokenizerError(
            f"{folder} holds only a SentencePiece model; gpt-simple reads tokenizers saved as "
            f"{TOKENIZER_FILE} (save the tokenizer with a fast tokenizer to get one)"
        )
    raise TokenizerError(f"no {TOKENIZER_FILE} in {folder}")


class HFTokenizer:
    """A gpt-simple run's tokenizer (implements :class:`gpt_simple.plugins.Tokenizer`)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        path = check_tokenizer_folder(folder)
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"{path}: cannot load tokenizer: {exc}") from None
        self.folder = folder
        self._size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = self._find_eos(folder)
        self.pad_token_id = self._find_pad(folder)
        self.never_generate = () if self.pad_token_id is None else (self.pad_token_id,)

    def _find_eos(self, folder: Path) -> int | None:
        eos = self._tokenizer.token_to_id(GPT2_EOS)
        if eos is not None:
            return eos
        named = _named_special(folder, "eos_token")
        return None if named is None else self._tokenizer.token_to_id(named)

    def _find_pad(self, folder: Path) -> int | None:
        named = _named_special(folder, "pad_token")
        pad = None if named is None else self._tokenizer.token_to_id(named)
        return pad if pad is not None else self._tokenizer.token_to_id(TRAINER_PAD)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tokenizer.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def max_token_bytes(self) -> int:
        """Longest token in bytes: a cheap lower bound of a text's token count is bytes / this."""
        vocab = self._tokenizer.get_vocab(with_added_tokens=False)
        return max((len(token) for token in vocab), default=1)

    def __len__(self) -> int:
        return self._size
