"""HipGPT's tokenizer.json, both versions, against the fixtures and the spec's examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpt_simple_core.errors import TokenizerError
from gpt_simple_core.protocol import Tokenizer
from gpt_simple_native.tokenizer import HipGPTTokenizer, read_tokenizer
from tests.native.hipgpt_writer import write_tokenizer


@pytest.fixture(scope="module")
def reference_tokenizer(native_reference: Path) -> HipGPTTokenizer:
    return read_tokenizer(native_reference / "tokenizer.json")


def test_protocol_and_size(reference_tokenizer: HipGPTTokenizer) -> None:
    assert isinstance(reference_tokenizer, Tokenizer)
    assert len(reference_tokenizer) == 1000
    assert reference_tokenizer.format_version == "v2"
    assert reference_tokenizer.eos_token_id is None
    assert reference_tokenizer.pad_token_id is None  # id 0 is an ordinary token
    assert reference_tokenizer.never_generate == ()


def test_reproduces_tokens_bin(
    native_reference: Path, reference_tokenizer: HipGPTTokenizer
) -> None:
    text = (native_reference / "data.txt").read_text(encoding="utf-8")
    expected = np.fromfile(native_reference / "tokens.bin", dtype="<i4")
    assert len(expected) == 64_170
    np.testing.assert_array_equal(np.array(reference_tokenizer.encode(text)), expected)


def test_unknown_characters_are_dropped(reference_tokenizer: HipGPTTokenizer) -> None:
    ids_of = {token: i for i, token in enumerate(reference_tokenizer.tokens)}
    assert reference_tokenizer.encode("café") == [ids_of["ca"], ids_of["f"]]  # spec example
    assert reference_tokenizer.encode("λ") == []  # the fixture's no-token prompt


def test_splits_on_ascii_whitespace_only(reference_tokenizer: HipGPTTokenizer) -> None:
    words = reference_tokenizer.encode("The assert")
    assert reference_tokenizer.encode(" The\t\n\v\f\rassert \n") == words
    # U+00A0 is not whitespace to C++'s `>>`: the two words stay one (and lose "The</w>").
    assert reference_tokenizer.encode("The\u00a0assert") != words


def test_decode(reference_tokenizer: HipGPTTokenizer) -> None:
    ids = reference_tokenizer.encode("The assert statement")
    assert reference_tokenizer.decode(ids) == "The assert statement "
    assert reference_tokenizer.decode([-1, *ids, 1000, 5000]) == "The assert statement "


def test_v1_example_of_the_spec() -> None:
    tokenizer = HipGPTTokenizer(["a", "b", "a</w>", "b</w>", "ab</w>", "ab"], None)
    assert tokenizer.format_version == "v1"
    assert tokenizer.encode("ab") == [4]
    assert tokenizer.encode("abab") == [5, 4]
    assert tokenizer.decode([5, 4]) == "abab "


def test_v1_merges_bytes() -> None:
    # "é" is two bytes: they are separate symbols until the concatenation "é</w>" joins them.
    tokenizer = HipGPTTokenizer(["c", "a", "f", "é</w>", "ca"], None)
    assert tokenizer.encode("café") == [4, 2, 3]
    assert tokenizer.encode("cafè") == [4, 2]  # "è</w>" is no token: both its bytes drop


def test_v2_merges_by_rank_left_to_right() -> None:
    tokens = ["a", "a</w>", "aa", "aa</w>", "aaaa"]
    tokenizer = HipGPTTokenizer(tokens, [("a", "a", 0), ("aa", "aa", 1), ("a", "a</w>", 2)])
    assert tokenizer.encode("aaa") == [2, 1]  # (a, a) first, leftmost occurrence: aa, a</w>
    assert tokenizer.encode("aaaaa") == [4, 1]  # aa aa a</w> -> aaaa a</w>
    assert tokenizer.encode("aa") == [3]  # rank 2 merges a + a</w> once nothing better applies


def test_v2_ignores_merges_of_unknown_tokens() -> None:
    tokenizer = HipGPTTokenizer(["a", "b</w>", "ab</w>"], [("x", "b</w>", 0), ("a", "b</w>", 1)])
    assert tokenizer.encode("ab") == [2]


def test_caches_words(reference_tokenizer: HipGPTTokenizer) -> None:
    first = reference_tokenizer.encode("assert assert")
    assert first[: len(first) // 2] == first[len(first) // 2 :]
    assert "assert" in reference_tokenizer._cache


def test_load_v1_and_v2_files(tmp_path: Path) -> None:
    v1 = read_tokenizer(write_tokenizer(tmp_path / "v1.json", ["a", "a</w>"]))
    v2 = read_tokenizer(write_tokenizer(tmp_path / "v2.json", ["a", "a</w>"], []))
    assert (v1.format_version, v2.format_version) == ("v1", "v2")
    assert v1.path == tmp_path / "v1.json"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not a JSON file"),
        (json.dumps({"model": {"type": "BPE"}, "added_tokens": []}), "no stoi_to_token"),
        (json.dumps({"stoi_to_token": []}), "non-empty list of strings"),
        (json.dumps({"stoi_to_token": ["a", 3]}), "non-empty list of strings"),
        (json.dumps({"stoi_to_token": ["a"], "merge_rank": {}}), "merge_rank must be a list"),
        (json.dumps({"stoi_to_token": ["a"], "merge_rank": [["a", "a"]]}), "merge_rank[0]"),
    ],
)
def test_rejects_malformed_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError) as info:
        read_tokenizer(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="cannot read tokenizer"):
        read_tokenizer(tmp_path / "tokenizer.json")


@pytest.mark.parametrize(
    ("text", "needle"),
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"a": 1, "a": 2}', "duplicate key")],
)
def test_a_hostile_tokenizer_json_is_a_tokenizer_error(tmp_path, text, needle):
    path = tmp_path / "tokenizer.json"
    path.write_text(text)
    with pytest.raises(TokenizerError, match=needle):
        read_tokenizer(path)
