"""The trainer's tokenizer semantics: EOS, pad, the never-generated ids and the padding band."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_simple_core.engine.sampler import forbidden_mask
from gpt_simple_core.errors import TokenizerError
from gpt_simple_core.protocol import Tokenizer
from gpt_simple_lm_format.tokenizer import HFTokenizer
from tests.core.helpers import word_tokenizer
from tests.support.checkpoints import tokenizer_vocab_size, write_tokenizer


def test_gpt2_endoftext_is_eos_even_when_the_config_names_another(tmp_path):
    folder = word_tokenizer(
        tmp_path / "t",
        ["a", "b"],
        ["<|endoftext|>", "</s>"],
        tokenizer_config={"eos_token": "</s>"},
    )
    tok = HFTokenizer(folder)
    assert tok.eos_token_id == 3
    assert isinstance(tok, Tokenizer)


@pytest.mark.parametrize(
    "side",
    [
        {"tokenizer_config": {"eos_token": "</s>"}},
        {"tokenizer_config": {"eos_token": {"content": "</s>", "special": True}}},
        {"special_tokens_map": {"eos_token": "</s>"}},
        {"tokenizer_config": {"bos_token": "<s>"}, "special_tokens_map": {"eos_token": "</s>"}},
    ],
)
def test_eos_from_the_tokenizer_config_without_endoftext(tmp_path, side):
    folder = word_tokenizer(tmp_path / "t", ["a", "b"], ["<s>", "</s>"], **side)
    assert HFTokenizer(folder).eos_token_id == 4


def test_no_eos_at_all(tmp_path):
    folder = word_tokenizer(tmp_path / "t", ["a"], [], tokenizer_config={"eos_token": "</gone>"})
    assert HFTokenizer(folder).eos_token_id is None


def test_pad_from_config_else_trainer_pad_else_none(tmp_path):
    named = word_tokenizer(
        tmp_path / "named", ["a"], ["<|pad|>", "[PAD]"], tokenizer_config={"pad_token": "[PAD]"}
    )
    tok = HFTokenizer(named)
    assert tok.pad_token_id == 3
    assert tok.never_generate == (3,)
    trainer = word_tokenizer(tmp_path / "trainer", ["a"], ["<|pad|>"])
    tok = HFTokenizer(trainer)
    assert tok.pad_token_id == 2 and tok.never_generate == (2,)
    none = word_tokenizer(tmp_path / "none", ["a"], [])
    tok = HFTokenizer(none)
    assert tok.pad_token_id is None and tok.never_generate == ()


def test_broken_side_file_is_reported(tmp_path):
    folder = word_tokenizer(tmp_path / "t", ["a"], [])
    (folder / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: cannot read"):
        HFTokenizer(folder)


def test_trainer_tokenizer_size_pad_band_and_decode(tmp_path):
    size = write_tokenizer(tmp_path / "t")
    tok = HFTokenizer(tmp_path / "t")
    assert len(tok) == size
    assert tok.pad_token_id == size - 1  # <|pad|> was added last
    assert tok.eos_token_id == 0
    ids = tok.encode("The try statement")
    assert tok.decode(ids) == "The try statement"
    assert tok.encode_batch(["The", "try"]) == [tok.encode("The"), tok.encode("try")]
    # special tokens are decoded as text (the trainer's skip_special_tokens=False)
    assert tok.decode([*ids, tok.eos_token_id]) == "The try statement<|endoftext|>"

    vocab = tokenizer_vocab_size(size)
    mask = forbidden_mask(vocab, len(tok), tok.never_generate)
    assert mask.shape == (vocab,)
    expected = np.zeros(vocab, dtype=bool)
    expected[size:] = True  # the padding band
    expected[tok.pad_token_id] = True
    np.testing.assert_array_equal(mask, expected)
    assert not mask[tok.eos_token_id]


def test_forbidden_mask_edges():
    np.testing.assert_array_equal(forbidden_mask(4, 10, (2, 99, -1)), [False, False, True, False])
    np.testing.assert_array_equal(forbidden_mask(4, 2, ()), [False, False, True, True])
