"""Strict JSON reading for every input a user hands us (record lines, checkpoint configs,
trainer states, tokenizer files, safetensors headers): a hostile or damaged one is an error with
a message, never a crash, and never a silent guess.

Python's ``json`` raises :class:`RecursionError` (not ``ValueError``) on deeply nested input,
which every ``except ValueError`` lets through, and silently keeps the last of repeated keys.
:func:`loads` turns the first into a ``ValueError`` and refuses the second, so callers keep
catching ``(OSError, ValueError)`` as they always did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DuplicateKey(ValueError):
    """A JSON object repeats a key: which value was meant is ambiguous, so it is refused."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that builds the object (key order kept) and refuses repeated keys
    (``{"prompt": "a", "prompt": "b"}`` would otherwise keep the last one silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"duplicate key {key!r} in one object (give each key once)")
            seen.add(key)
    return obj


DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, raising ``ValueError`` for invalid JSON, repeated keys and
    nesting too deep for Python's reader. Bare ``NaN``/``Infinity`` are accepted (the trainer
    writes ``Infinity`` into ``trainer_state.json``)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"invalid UTF-8: {exc}") from None
    try:
        return DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def read(path: Path) -> Any:
    """The JSON value of the file ``path`` (UTF-8); ``OSError`` or ``ValueError`` otherwise."""
    return loads(path.read_bytes())
