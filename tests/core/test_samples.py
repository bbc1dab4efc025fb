"""Several samples per record (issue 15, item 3): ``generation.n`` gives ``completions``, each
sample equal to the single-sample run with its derived seed; the first is ``completion``."""

from __future__ import annotations

import pytest

from gpt_simple_core.records.seeds import sample_seed
from tests.core.helpers import run_batch


def test_each_sample_is_the_single_run_with_its_seed(tmp_path, capsys, toy_ckpt):
    record = {
        "prompt": "ab",
        "generation": {"max_new_tokens": 6, "n": 4, "seed": 9, "ignore_eos": True},
    }
    code, (out,), err = run_batch(capsys, tmp_path, [record], "--checkpoint", "toy")
    assert code == 0, err
    assert len(out["completions"]) == 4 and out["completion"] == out["completions"][0]
    assert len(set(out["completions"])) > 1  # different seeds, different samples
    assert out["generation"]["n"] == 4 and out["generation"]["seed"] == 9
    assert out["meta"]["finish_reasons"] == ["length"] * 4
    assert out["meta"]["completion_tokens"] == 24
    singles = [
        {
            "prompt": "ab",
            "generation": {"max_new_tokens": 6, "seed": sample_seed(9, j), "ignore_eos": True},
        }
        for j in range(4)
    ]
    code, outs, err = run_batch(capsys, tmp_path, singles, "--checkpoint", "toy")
    assert code == 0, err
    assert [o["completion"] for o in outs] == out["completions"]
    assert "completions" not in outs[0] and "n" not in outs[0]["generation"]


def test_samples_keep_input_order_and_logprobs_per_sample(tmp_path, capsys, toy_ckpt):
    records = [
        {
            "prompt": "a",
            "generation": {"max_new_tokens": 3, "n": 3, "logprobs": 1, "ignore_eos": True},
        },
        {"prompt": "b", "generation": {"max_new_tokens": 2}},
        {"prompt": "c", "generation": {"max_new_tokens": 2, "n": 2}},
    ]
    code, out, err = run_batch(
        capsys, tmp_path, records, "--checkpoint", "toy", "--batch-size", "2"
    )
    assert code == 0, err
    assert [o["prompt"] for o in out] == ["a", "b", "c"]
    assert [len(o.get("completions", [])) for o in out] == [3, 0, 2]
    assert [len(sample) for sample in out[0]["logprobs"]] == [3, 3, 3]


def test_a_failing_sample_fails_its_record_once(tmp_path, capsys, toy):
    from tests.support.toy_backend import write_toy_checkpoint

    write_toy_checkpoint(tmp_path / "toy", poison="z")
    records = [
        {"prompt": "z", "generation": {"max_new_tokens": 3, "n": 3}},
        {"prompt": "a", "generation": {"max_new_tokens": 2, "n": 2}},
    ]
    code, out, err = run_batch(capsys, tmp_path, records, "--checkpoint", "toy")
    assert code == 1, err
    assert len(out) == 2 and "error" in out[0] and "poisoned" in out[0]["error"]["message"]
    assert len(out[1]["completions"]) == 2


@pytest.mark.parametrize("n", [0, 129, "2"])
def test_n_is_checked_at_plan_time(tmp_path, capsys, toy_ckpt, n):
    record = {"prompt": "a", "generation": {"n": n}}
    code, _, err = run_batch(capsys, tmp_path, [record], "--checkpoint", "toy")
    assert code == 2 and "generation.n" in err
