"""``generation.n`` on the torch backend (issue 15, item 3): the samples of a record prefill
its prompt once and copy the KV cache (``LoadedModel.copy_row``), and each sample still
equals the single-sample run of the record with its derived seed."""

from __future__ import annotations

import pytest

from gpt_simple_core.records.seeds import sample_seed
from gpt_simple_torch.model import GPT
from tests.support.checkpoints import write_checkpoint
from tests.support.cli import run_batch

pytestmark = pytest.mark.torch

PROMPT = "The try statement specifies exception handlers and cleanup code"


def test_samples_prefill_once_and_equal_their_single_runs(tmp_path, capsys, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "c")
    prefills: list[int] = []
    step = GPT.step

    def counting(self, cache, slots, tokens, *args):
        prefills.extend(len(t) for t in tokens if len(t) > 1)
        return step(self, cache, slots, tokens, *args)

    monkeypatch.setattr(GPT, "step", counting)
    generation = {"max_new_tokens": 8, "ignore_eos": True, "temperature": 1.0, "logprobs": 0}
    record = {"prompt": PROMPT, "generation": {**generation, "n": 4, "seed": 21}}
    flags = ("--checkpoint", str(ckpt))
    code, (out,), err = run_batch(capsys, tmp_path, [record], *flags)
    assert code == 0, err
    assert len(prefills) == 1  # one prefill for the four samples
    singles = [
        {"prompt": PROMPT, "generation": {**generation, "seed": sample_seed(21, j)}}
        for j in range(4)
    ]
    code, outs, err = run_batch(capsys, tmp_path, singles, *flags, "--batch-size", "1")
    assert code == 0, err
    assert out["completions"] == [single["completion"] for single in outs]
    for ours, single in zip(out["logprobs"], outs, strict=True):
        assert [e["token"] for e in ours] == [e["token"] for e in single["logprobs"]]
        for a, b in zip(ours, single["logprobs"], strict=True):
            assert abs(a["logprob"] - b["logprob"]) <= 1e-5
    assert len(set(out["completions"])) > 1
