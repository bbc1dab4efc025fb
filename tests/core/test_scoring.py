"""Scoring and logprobs on the toy backend (issue 15): ``is_greedy`` on a continuation the
model scripts, the protocol's default ``forward_all`` (token by token) against the logits
``forward`` gives, and the rules of lm-eval's windows and pair encoding."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_simple_core.engine.logprobs import log_softmax, raw_logprobs
from gpt_simple_core.engine.scoring import encode_pair, rolling_windows
from tests.core.helpers import run_batch
from tests.support.toy_backend import TOKENIZER_SIZE, ToyModel, ToyTokenizer, write_toy_checkpoint


@pytest.fixture
def scripted(tmp_path, toy):
    return write_toy_checkpoint(tmp_path / "toy", script="xyz")


def score_lines(capsys, tmp_path, records):
    from tests.core.helpers import cli, read_jsonl, write_jsonl

    source = write_jsonl(tmp_path / "score.jsonl", records)
    output = tmp_path / "scored.jsonl"
    code, _, err = cli(capsys, "score", "--input", str(source), "--checkpoint", "toy",
                       "--output", str(output), "--overwrite")  # fmt: skip
    assert code in (0, 1), err
    return read_jsonl(output)


def test_is_greedy_follows_the_models_argmax(tmp_path, capsys, scripted):
    greedy, other = score_lines(
        capsys,
        tmp_path,
        [{"context": "ab", "continuation": "xyz"}, {"context": "ab", "continuation": "xzz"}],
    )
    assert greedy["score"]["is_greedy"] is True and other["score"]["is_greedy"] is False
    assert greedy["score"]["logprob"] > other["score"]["logprob"]
    assert greedy["score"]["tokens"] == 3


def test_score_equals_the_prompt_logprobs_of_a_generation(tmp_path, capsys, toy_ckpt):
    """On the plain toy, whose logits are a function of the history alone (the scripted one
    also depends on where it thinks the prompt ends)."""
    (scored,) = score_lines(capsys, tmp_path, [{"context": "ab", "continuation": "cab"}])
    code, (generated,), err = run_batch(
        capsys,
        tmp_path,
        [{"prompt": "abcab", "generation": {"max_new_tokens": 1, "prompt_logprobs": 2}}],
        "--checkpoint",
        "toy",
    )
    assert code == 0, err
    tail = generated["prompt_logprobs"][2:]
    assert [e["text"] for e in tail] == ["c", "a", "b"]
    assert sum(e["logprob"] for e in tail) == pytest.approx(scored["score"]["logprob"], abs=1e-9)


def test_the_default_forward_all_equals_forward_token_by_token(toy):
    from gpt_simple.plugins import LoadRequest

    ids = ToyTokenizer().encode("abcab")
    model = ToyModel({}, LoadRequest(dtype="fp32", device="cpu"))
    (every,) = model.forward_all([0], [ids])
    model.release([0])
    one_by_one = [model.forward([0], [[token]])[0] for token in ids]
    assert every.shape == (len(ids), one_by_one[0].shape[-1])
    assert np.array_equal(every, np.stack(one_by_one))


def test_raw_logprobs_leave_the_padding_band_out():
    logits = np.array([1.0, 2.0, 3.0, 1000.0], dtype=np.float32)  # the last id is no token
    row = raw_logprobs(logits, tokenizer_size=3)
    assert row.shape == (3,) and np.exp(row).sum() == pytest.approx(1.0)
    assert np.allclose(log_softmax(np.array([0.0, -np.inf])), [0.0, -np.inf])


def test_encode_pair_moves_the_contexts_trailing_spaces():
    tokenizer = ToyTokenizer()
    context, continuation = encode_pair(tokenizer, "ab ", "c")
    assert context == tokenizer.encode("ab") and continuation == tokenizer.encode(" c")


@pytest.mark.parametrize("count", [1, 5, 16, 17, 40])
def test_rolling_windows_predict_every_token_once(count):
    ids = list(range(100, 100 + count))
    windows = list(rolling_windows(ids, prefix=0, length=16))
    assert [t for _, predicted in windows for t in predicted] == ids
    assert windows[0][0] == [0]
    for context, predicted in windows:
        assert len(context) + len(predicted) - 1 <= 16  # what is fed fits the context


def test_score_records_are_checked_like_any_record(tmp_path, capsys, scripted):
    from tests.core.helpers import cli, write_jsonl

    source = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"context": "a"}, {"text": ""}, {"prompt": "a"}, {"text": "a", "context": "b"}],
    )
    code, _, err = cli(capsys, "score", "--input", str(source), "--checkpoint", "toy")
    assert code == 2
    for line in (1, 2, 3, 4):
        assert f"bad.jsonl:{line}:" in err
    assert TOKENIZER_SIZE  # the toy's vocabulary is what raw logprobs normalise over
