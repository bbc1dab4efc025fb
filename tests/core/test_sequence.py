"""Stop strings found incrementally: the same cut as decoding the whole completion each step.

The reference is the obvious rule: after every token, decode everything generated so far and
stop at the first token after which some stop string occurs, cutting before its earliest
occurrence. :class:`StopStrings` decodes only a short window per token; these tests drive both
over real tokenizers (byte-level BPE with multi-byte characters split across tokens, and a
word-level one whose decoder puts spaces between tokens).
"""

from __future__ import annotations

import random

import pytest

from gpt_simple_core.engine.token_sequence import StopStrings
from gpt_simple_lm_format.tokenizer import HFTokenizer
from tests.core.helpers import TEXTS
from tests.support.checkpoints import write_tokenizer


def reference_cut(tokenizer, ids: list[int], stops: tuple[str, ...]) -> tuple[int, str] | None:
    """(tokens consumed, completion) at the first stop, by full decodes."""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n])
        hits = [i for s in stops if (i := text.find(s)) >= 0]
        if hits:
            return n, text[: min(hits)]
    return None


def incremental_cut(tokenizer, ids: list[int], stops: tuple[str, ...]) -> tuple[int, str] | None:
    scanner = StopStrings(tokenizer, stops)
    for n in range(1, len(ids) + 1):
        text = scanner.cut(ids[:n])
        if text is not None:
            return n, text
    return None


def stop_candidates(text: str, rng: random.Random) -> list[tuple[str, ...]]:
    """Substrings at random places (so they occur), plus some that never do."""
    out = []
    for _ in range(12):
        start = rng.randrange(len(text) - 1)
        out.append((text[start : start + rng.randint(1, 6)],))
    out += [("zzzq",), ("q", "é"), (" ", "🙃"), ("ab", "b a", "xx")]
    return out


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_stop_strings_cut_where_full_decodes_cut(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids).replace(" ", "") != ""
    rng = random.Random(text)
    found = 0
    for stops in stop_candidates(tokenizer.decode(ids), rng):
        expected = reference_cut(tokenizer, ids, stops)
        assert incremental_cut(tokenizer, ids, stops) == expected, stops
        found += expected is not None
    assert found >= 10  # most candidates really occur


def test_a_stop_string_inside_a_split_multibyte_character_waits_for_its_bytes(tmp_path):
    write_tokenizer(tmp_path / "bpe")
    tokenizer = HFTokenizer(tmp_path / "bpe")
    ids = tokenizer.encode("x日本")  # untrained characters: one token per byte
    assert len(ids) >= 7
    assert incremental_cut(tokenizer, ids, ("本",)) == (len(ids), "x日")
