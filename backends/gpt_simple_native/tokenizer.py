"""HipGPT's ``tokenizer.json``: a word-level BPE of its own (not a Hugging Face file).

Two versions exist (spec section 3), told apart by the presence of ``merge_rank``:

* v2 ``{"merge_rank": [[left, right, rank], ...], "stoi_to_token": [...]}``: symbols are UTF-8
  characters and the pair with the lowest merge rank merges first;
* v1 ``{"stoi_to_token": [...]}``: symbols are bytes and a pair's priority is the id of its
  concatenation (lower first; a pair whose concatenation is not a token never merges).

Both split the text on ASCII whitespace, append ``</w>`` to each word's last symbol, then run
the same loop: find the best-priority adjacent pair (the first one on ties), replace every
non-overlapping occurrence of exactly that pair left to right, repeat until nothing merges.
Symbols that are not tokens are dropped silently: HipGPT has no unknown token.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from gpt_simple.plugins import TokenizerError, read_json

END_OF_WORD = "</w>"
# C++ `istream >> word` in the C locale splits on exactly these six characters; Python's
# str.split() would also split on Unicode spaces such as U+00A0 and change the encoding.
_WORD = re.compile(r"[^ \t\n\v\f\r]+")
# HipGPT starts its search from INT_MAX with a strict `<`, so a priority of INT_MAX never wins.
_NO_PRIORITY = 2**31 - 1

Symbol = TypeVar("Symbol", str, bytes)


def _utf8(text: str) -> bytes:
    # "surrogatepass" never raises, so a lone surrogate in odd input cannot crash encoding.
    return text.encode("utf-8", "surrogatepass")


def merge_word(
    symbols: list[Symbol], priority: Callable[[Symbol, Symbol], int | None]
) -> list[Symbol]:
    """Run HipGPT's BPE loop over one word's symbols (``str`` for v2, ``bytes`` for v1)."""
    while len(symbols) > 1:
        best, best_priority = None, _NO_PRIORITY
        for pair in itertools.pairwise(symbols):
            rank = priority(*pair)
            if rank is not None and rank < best_priority:
                best, best_priority = pair, rank
        if best is None:
            break
        left, right = best
        merged: list[Symbol] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                merged.append(left + right)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class HipGPTTokenizer:
    """A loaded ``tokenizer.json``, implementing the core's ``Tokenizer`` protocol.

    There are no special tokens: no EOS, and id 0 is an ordinary token that HipGPT also uses
    to pad its window, so it is not a padding id the core may mask.
    """

    eos_token_id: int | None = None
    pad_token_id: int | None = None
    never_generate: tuple[int, ...] = ()

    def __init__(
        self,
        tokens: Sequence[str],
        merge_ranks: Sequence[tuple[str, str, int]] | None,
        path: Path | None = None,
    ) -> None:
        """``tokens`` is ``stoi_to_token``; ``merge_ranks`` is v2's list, ``None`` for v1."""
        self.path = path
        self.tokens = list(tokens)
        self.format_version = "v1" if merge_ranks is None else "v2"
        # As in HipGPT's std::map assignment, a duplicated token maps to its last id.
        self._id_of_text = {token: i for i, token in enumerate(self.tokens)}
        self._id_of_bytes = {_utf8(token): i for token, i in self._id_of_text.items()}
        # v2 keeps only merges whose two sides are tokens (HipGPT's loader skips the others),
        # which also enforces its "both symbols are in the vocabulary" rule when merging.
        self._merge_rank = {
            (left, right): rank
            for left, right, rank in merge_ranks or ()
            if left in self._id_of_text and right in self._id_of_text
        }
        self._pieces = [
            token[: -len(END_OF_WORD)] + " " if token.endswith(END_OF_WORD) else token
            for token in self.tokens
        ]
        self._cache: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; characters with no token are dropped silently."""
        ids: list[int] = []
        for word in _WORD.findall(text):
            encoded = self._cache.get(word)
            if encoded is None:
                encoded = self._cache[word] = self._encode_word(word)
            ids.extend(encoded)
        return ids

    def _encode_word(self, word: str) -> tuple[int, ...]:
        if self.format_version == "v2":
            chars = list(word)
            chars[-1] += END_OF_WORD
            merged = merge_word(chars, lambda a, b: self._merge_rank.get((a, b)))
            return tuple(self._id_of_text[s] for s in merged if s in self._id_of_text)
        # v1 works on bytes: a multi-byte character is several symbols until merges join them.
        raw = _utf8(word)
        symbols = [raw[i : i + 1] for i in range(len(raw))]
        symbols[-1] += END_OF_WORD.encode()
        merged = merge_word(symbols, lambda a, b: self._id_of_bytes.get(a + b))
        return tuple(self._id_of_bytes[s] for s in merged if s in self._id_of_bytes)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: ``</w>`` becomes one space; ids outside [0, V) are skipped."""
        size = len(self._pieces)
        return "".join(self._pieces[i] for i in ids if 0 <= i < size)


def read_tokenizer(path: Path) -> HipGPTTokenizer:
    """Read a HipGPT ``tokenizer.json`` (v1 or v2); :class:`TokenizerError` names the file."""
    try:
        data = read_json(path)
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read tokenizer: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise TokenizerError(f"{path}: not a JSON file: {exc}") from None

    def bad(problem: str) -> TokenizerError:
        return TokenizerError(f"{path}: not a HipGPT tokenizer.json: {problem}")

    if not isinstance(data, dict) or "stoi_to_token" not in data:
        raise bad("no stoi_to_token list (a Hugging Face tokenizer.json is not this format)")
    tokens = data["stoi_to_token"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise bad("stoi_to_token must be a non-empty list of strings")
    merges = None
    if "merge_rank" in data:
        raw = data["merge_rank"]
        if not isinstance(raw, list):
            raise bad("merge_rank must be a list of [left, right, rank]")
        merges = []
        for n, entry in enumerate(raw):
            if not (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], str)
                and isinstance(entry[2], int)
                and not isinstance(entry[2], bool)
            ):
                raise bad(f"merge_rank[{n}] is {entry!r}, not [left, right, integer rank]")
            merges.append((entry[0], entry[1], entry[2]))
    return HipGPTTokenizer(tokens, merges, path)
