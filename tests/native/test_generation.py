"""Every recorded HipGPT ``generate`` run, reproduced through ``NativeModel.forward``.

The core's engine owns the real decode loop; a tiny greedy loop here (argmax, ties to the
lowest id, which is what HipGPT's sampler amounts to) drives the backend protocol the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gpt_simple_core.protocol import OVERFLOW_WINDOW, LoadRequest
from gpt_simple_native.plugin import NativeBackend, NativeModel, inspect
from tests.native.hipgpt_writer import random_model, write_tokenizer


@pytest.fixture(scope="module")
def cases(native_reference: Path) -> list[dict]:
    data = json.loads((native_reference / "expected_outputs.json").read_text(encoding="utf-8"))
    assert len(data["cases"]) == 14
    return data["cases"]


@pytest.fixture(scope="module")
def model(native_reference: Path) -> NativeModel:
    info = inspect(native_reference / "gpt_checkpoint.bin", None, True)
    assert info is not None
    return NativeBackend().load(info, LoadRequest())


class WindowSpy:
    """Records the windows each forward pass sees."""

    def __init__(self, model: NativeModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.windows: list[np.ndarray] = []
        real = model.model.last_logits

        def spy(windows: np.ndarray) -> np.ndarray:
            self.windows.append(windows.copy())
            return real(windows)

        monkeypatch.setattr(model.model, "last_logits", spy)


def greedy(
    model: NativeModel, rows: Sequence[int], prompts: Sequence[list[int]], steps: int
) -> list[list[int]]:
    """Greedy continuation of several rows at once: ids generated per row."""
    logits = model.forward(rows, prompts)
    generated: list[list[int]] = [[] for _ in rows]
    for _ in range(steps):
        picks = [int(np.argmax(row_logits)) for row_logits in logits]  # ties -> lowest id
        for out, pick in zip(generated, picks, strict=True):
            out.append(pick)
        logits = model.forward(rows, [[pick] for pick in picks])
    model.release(rows)
    return generated


def test_model_attributes(model: NativeModel) -> None:
    assert (model.dtype, model.device) == ("fp32", "cpu")
    assert model.context_length == 32
    assert model.context_overflow == OVERFLOW_WINDOW
    assert model.notes == {"window": 32, "tokenizer_format": "v2"}
    assert len(model.tokenizer) == 1000


@pytest.mark.parametrize("index", range(14))
def test_expected_outputs(
    cases: list[dict], model: NativeModel, monkeypatch: pytest.MonkeyPatch, index: int
) -> None:
    case = cases[index]
    prompt = model.tokenizer.encode(case["prompt"])
    if case["generated_ids"] is None:  # "Error: prompt produced no tokens."
        assert prompt == [] and case["prompt_ids"] == []
        return
    spy = WindowSpy(model, monkeypatch)
    steps = case["cli_args"].get("num_tokens", 50)
    [generated] = greedy(model, [3], [prompt], steps)

    window = list(spy.windows[0][0])
    assert window == case["first_window"]
    kept = case["prompt_ids"]  # after HipGPT's trim to the last S-1 ids
    assert window[32 - len(kept) :] == kept and prompt[-len(kept) :] == kept
    assert generated == case["generated_ids"]
    assert model.tokenizer.decode(generated) == case["generated_text"]
    assert case["stdout_and_stderr"].endswith(f"Generated: {case['generated_text']}\n")


def test_long_prompt_is_trimmed_to_s_minus_1(cases: list[dict], model: NativeModel) -> None:
    case = next(c for c in cases if len(c["prompt_ids"]) == 31)
    assert len(model.tokenizer.encode(case["prompt"])) == 54


def test_rows_in_one_batch_match_rows_alone(cases: list[dict], model: NativeModel) -> None:
    runs = [c for c in cases if c["generated_ids"] is not None and "num_tokens" in c["cli_args"]]
    prompts = [model.tokenizer.encode(c["prompt"]) for c in runs]
    together = greedy(model, [5, 0, 2, 7, 1, 4, 3, 6][: len(runs)], prompts, 20)
    for case, generated in zip(runs, together, strict=True):
        expected = case["generated_ids"]  # 10 or 20 ids
        assert generated[: len(expected)] == expected


def test_release_forgets_a_row(model: NativeModel) -> None:
    prompt = model.tokenizer.encode("The assert statement")
    first = model.forward([0], [prompt])
    model.forward([0], [[185, 151]])
    model.release([0])
    np.testing.assert_array_equal(model.forward([0], [prompt]), first)
    model.release([0])


def test_window_slides_over_a_long_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of different lengths in one call, trimming, and a window that slides (S = 6)."""
    random_model(V=9, S=6, E=8, L=1, H=2, F=4).write(tmp_path / "gpt_checkpoint.bin")
    write_tokenizer(tmp_path / "tokenizer.json", [chr(ord("a") + i) for i in range(9)])
    info = inspect(tmp_path, None, True)
    assert info is not None
    model = NativeBackend().load(info, LoadRequest(dtype="fp32", device="cpu"))
    spy = WindowSpy(model, monkeypatch)

    logits = model.forward([0, 1], [[1, 2, 3, 4, 5, 6, 7], [8]])  # row 0: 7 >= S ids
    assert logits.shape == (2, 9) and logits.dtype == np.float32
    model.forward([1, 0], [[2, 3], [8]])
    model.forward([0], [[1, 1]])
    assert spy.windows[0].tolist() == [[0, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 8]]
    assert spy.windows[1].tolist() == [[0, 0, 0, 8, 2, 3], [3, 4, 5, 6, 7, 8]]
    assert spy.windows[2].tolist() == [[5, 6, 7, 8, 1, 1]]


def test_logprobs_and_scores_equal_a_direct_log_softmax(model: NativeModel) -> None:
    """Issue 15 on the native backend (prompt logprobs and scores go through the protocol's
    default ``forward_all``, one token at a time): each entry is the log_softmax of the logits
    ``forward`` gives for that history from a fresh row."""
    from gpt_simple_core.api import generate_records, score
    from gpt_simple_core.engine.logprobs import raw_logprobs

    prompt = "for each item in the list"
    (record,) = generate_records(
        model, model.tokenizer, [prompt], max_new_tokens=4, do_sample=False,
        logprobs=2, prompt_logprobs=1,
    )  # fmt: skip
    prompt_ids = model.tokenizer.encode(prompt)
    generated = [e["token"] for e in record["logprobs"]]
    history = prompt_ids + generated

    def direct(position: int) -> np.ndarray:  # the distribution after history[:position]
        model.release([0])
        (logits,) = model.forward([0], [history[:position]])
        model.release([0])
        return raw_logprobs(logits, len(model.tokenizer))

    for step, entry in enumerate(record["logprobs"]):
        assert abs(entry["logprob"] - direct(len(prompt_ids) + step)[entry["token"]]) <= 1e-4
    for position, entry in enumerate(record["prompt_logprobs"][1:], 1):
        assert abs(entry["logprob"] - direct(position)[entry["token"]]) <= 1e-4
    words = model.tokenizer.decode(prompt_ids[:3]), model.tokenizer.decode(prompt_ids[3:])
    (scored,) = score(model, model.tokenizer, [{"context": words[0], "continuation": words[1]}])
    assert scored["score"]["tokens"] >= 1 and scored["score"]["logprob"] < 0
