"""Log-probabilities and scoring (issue 15, items 1 and 2) on the torch backend, against a
direct ``log_softmax`` of the model's full-sequence logits (``model(input_ids).logits``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_simple import generate_records, load_for_inference, score
from gpt_simple_core.engine.scoring import encode_pair
from tests.support.checkpoints import (
    PEAKED_SCALE,
    random_state_dict,
    small_config,
    write_checkpoint,
    write_tokenizer,
)
from tests.support.cli import read_jsonl, run_batch

pytestmark = pytest.mark.torch

PROMPTS = ["The assert statement", "for each item", "An exception is raised when an error", "O"]
TOLERANCE = 1e-4


def _checkpoint(folder: Path, **overrides) -> Path:
    size = write_tokenizer(folder / "tokenizer")
    config = small_config(size, **overrides)
    return write_checkpoint(folder, config, weights=random_state_dict(config, 3, PEAKED_SCALE))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    ckpt = _checkpoint(tmp_path_factory.mktemp("lp") / "c")
    model, tokenizer, _ = load_for_inference(ckpt, device="cpu", dtype="fp32")
    return ckpt, model, tokenizer


def direct(model, tokenizer, ids: list[int]) -> np.ndarray:
    """log_softmax over the tokenizer's tokens at every position of ``ids`` (float64)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :, : len(tokenizer)]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


@pytest.mark.parametrize("batch_size", [1, len(PROMPTS)])
def test_generated_and_prompt_logprobs_equal_a_direct_log_softmax(loaded, batch_size):
    _, model, tokenizer = loaded
    records = generate_records(
        model, tokenizer, PROMPTS, max_new_tokens=6, do_sample=False, ignore_eos=True,
        logprobs=5, prompt_logprobs=3, batch_size=batch_size,
    )  # fmt: skip
    for prompt, record in zip(PROMPTS, records, strict=True):
        prompt_ids = tokenizer.encode(prompt)
        generated = [e["token"] for e in record["logprobs"]]
        assert len(generated) == 6
        expected = direct(model, tokenizer, prompt_ids + generated)
        for step, e in enumerate(record["logprobs"]):
            row = expected[len(prompt_ids) - 1 + step]
            assert abs(e["logprob"] - row[e["token"]]) <= TOLERANCE
            assert e["token"] == int(np.argmax(row))  # greedy took the argmax
            best = np.argsort(-row, kind="stable")[:5]
            assert [t["token"] for t in e["top"]] == best.tolist()
            assert np.allclose([t["logprob"] for t in e["top"]], row[best], atol=TOLERANCE)
        entries = record["prompt_logprobs"]
        assert entries[0] is None and len(entries) == len(prompt_ids)
        for position, e in enumerate(entries[1:], 1):
            assert e["token"] == prompt_ids[position]
            assert abs(e["logprob"] - expected[position - 1][e["token"]]) <= TOLERANCE
            assert len(e["top"]) == 3


def test_batched_and_alone_agree(loaded):
    _, model, tokenizer = loaded
    runs = [
        generate_records(
            model,
            tokenizer,
            PROMPTS,
            max_new_tokens=5,
            seed=11,
            logprobs=2,
            batch_size=size,
        )
        for size in (1, len(PROMPTS))
    ]
    for alone, together in zip(*runs, strict=True):
        assert alone["completion"] == together["completion"]
        for a, b in zip(alone["logprobs"], together["logprobs"], strict=True):
            assert a["token"] == b["token"] and abs(a["logprob"] - b["logprob"]) <= TOLERANCE


def test_processed_logprobs_are_the_sampling_distribution(loaded):
    _, model, tokenizer = loaded
    (record,) = generate_records(
        model, tokenizer, ["The assert"], max_new_tokens=4, seed=5, temperature=0.7, top_k=4,
        logprobs=10, logprobs_mode="processed",
    )  # fmt: skip
    ids = tokenizer.encode("The assert")
    generated = [e["token"] for e in record["logprobs"]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + generated])).logits[0].double()
    for step, e in enumerate(record["logprobs"]):
        row = logits[len(ids) - 1 + step, : len(tokenizer)] / 0.7
        top4 = torch.topk(row, 4)
        expected = torch.log_softmax(top4.values, dim=-1)
        assert len(e["top"]) == 4  # nothing outside top-k has a probability
        assert sorted(t["token"] for t in e["top"]) == sorted(top4.indices.tolist())
        assert abs(e["logprob"] - expected[top4.indices.tolist().index(e["token"])]) <= TOLERANCE


def test_score_equals_prompt_logprobs_and_a_direct_sum(loaded):
    _, model, tokenizer = loaded
    context, continuation = "The assert", " statement is a convenient way"
    (scored,) = score(model, tokenizer, [{"context": context, "continuation": continuation}])
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    rows = direct(model, tokenizer, context_ids + continuation_ids)
    predicted = [rows[len(context_ids) - 1 + i][t] for i, t in enumerate(continuation_ids)]
    assert abs(scored["score"]["logprob"] - sum(predicted)) <= TOLERANCE
    assert scored["score"]["tokens"] == len(continuation_ids)
    greedy = all(
        int(np.argmax(rows[len(context_ids) - 1 + i])) == t for i, t in enumerate(continuation_ids)
    )
    assert scored["score"]["is_greedy"] == greedy
    (record,) = generate_records(
        model, tokenizer, [context + continuation], max_new_tokens=1, prompt_logprobs=0
    )
    tail = record["prompt_logprobs"][len(context_ids) :]
    assert abs(sum(e["logprob"] for e in tail) - scored["score"]["logprob"]) <= TOLERANCE


def _lm_eval_rolling_windows(token_list, prefix_token, max_seq_len, context_len):
    """lm-evaluation-harness's ``get_rolling_token_windows`` and ``make_disjoint_window``
    (lm_eval/utils.py), copied as they are: our windows must be theirs."""
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield ([prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len])  # noqa: RUF005
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def test_rolling_loglikelihood_windows_as_lm_eval_does(tmp_path):
    ckpt = _checkpoint(tmp_path / "short", n_positions=16)
    model, tokenizer, _ = load_for_inference(ckpt, device="cpu", dtype="fp32")
    text = "The try statement specifies exception handlers and cleanup code for a group " * 3
    (scored,) = score(model, tokenizer, [{"text": text}])
    ids = tokenizer.encode(text)
    assert len(ids) > 3 * 16  # several windows
    expected, windows = 0.0, 0
    for context, predicted in _lm_eval_rolling_windows(ids, tokenizer.eos_token_id, 16, 1):
        context = context[: len(context) - (len(predicted) - 1)]  # make_disjoint_window
        rows = direct(model, tokenizer, (context + predicted)[:-1])
        first = len(context) - 1
        expected += sum(rows[first + i][t] for i, t in enumerate(predicted))
        windows += 1
    assert scored["score"]["windows"] == windows
    assert scored["score"]["tokens"] == len(ids)
    assert abs(scored["score"]["logprob"] - expected) <= 1e-3


def test_the_score_command_plans_runs_and_resumes(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "c")
    records = [
        {"id": 1, "context": "The assert", "continuation": " statement"},
        {"id": 2, "text": "for each item in the list"},
        {"id": 3, "context": "", "continuation": "An exception"},
        {"id": 4, "context": "x", "continuation": "y", "model": {"checkpoint": "nope"}},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    from tests.support.cli import cli

    code, out, err = cli(capsys, "score", "--input", str(source), "--checkpoint", str(ckpt),
                         "--dry-run")  # fmt: skip
    assert code == 0 and "3 records in 1 group" in out, err
    output = tmp_path / "out.jsonl"
    code, _, err = cli(capsys, "score", "--input", str(source), "--checkpoint", str(ckpt),
                       "--output", str(output))  # fmt: skip
    assert code == 0, err
    rows = read_jsonl(output)
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert all("score" in r and "generation" not in r and "completion" not in r for r in rows)
    assert rows[1]["score"]["windows"] == 1
    code, _, err = cli(capsys, "score", "--input", str(source), "--checkpoint", str(ckpt),
                       "--output", str(output), "--resume")  # fmt: skip
    assert code == 0, err
    assert read_jsonl(output) == rows
    code, _, err = run_batch(capsys, tmp_path, records)  # a score file is no sweep
    assert code == 2 and "prompt: is required" in err
