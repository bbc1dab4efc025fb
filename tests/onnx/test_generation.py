"""Text: greedy and seeded sampling give the PyTorch backend's tokens, batched and unbatched,
through the protocol and through the core's engine (divergence only at a near-tie)."""

from __future__ import annotations

import pytest

from gpt_simple_core.api import generate_records
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.protocol import LoadedModel
from tests.onnx.conftest import Exported
from tests.onnx.helpers import onnx_model, torch_model
from tests.support.near_ties import CDF_MARGIN, NEAR_TIE, assert_same_or_near_tie, greedy, sample

pytestmark = pytest.mark.onnx

ARCHITECTURE = "gqa-linear-untied"
STEPS = 20
TEXTS = [
    "The assert statement",
    "The try statement specifies",
    "for each item in the list",
    "An exception is raised when",
    "Objects are",
    "The",
    "a program",
    "cleanup code for a group of statements",
    "The loop body is executed once, and",
    "it can be handled by the surrounding code or by the caller",
    "Python's abstraction",
    "insert debugging assertions into",
    "exception handlers",
    "the target is assigned",
    "statements. The",
    "error",
    "handled by",
    "for",
    "data. Objects",
    "is a convenient way to",
]


@pytest.fixture(scope="module")
def models(
    exported: Exported, checkpoints: dict[str, CheckpointInfo]
) -> tuple[LoadedModel, LoadedModel]:
    return onnx_model(exported(ARCHITECTURE)), torch_model(checkpoints[ARCHITECTURE])


def compare(
    runs: dict[str, dict[int, list[int]]],
    reference: dict[int, list[int]],
    margins: dict[int, list[float]],
    threshold: float,
) -> list[str]:
    notes = []
    for label, chosen in runs.items():
        for row, tokens in chosen.items():
            note = assert_same_or_near_tie(
                reference[row], margins[row], tokens, f"{label} row {row}", threshold
            )
            if note:
                notes.append(note)
    print("\n".join(notes) or "no divergence")  # report, never hide, accepted near-ties
    return notes


def test_greedy_tokens_match_torch_batched_and_alone(
    models: tuple[LoadedModel, LoadedModel],
) -> None:
    ours, reference = models
    prompts = {row: ours.tokenizer.encode(text) for row, text in enumerate(TEXTS)}
    expected, gaps = {}, {}
    for row, ids in prompts.items():  # torch, one prompt at a time: the reference
        chosen, margin = greedy(reference, {row: ids}, STEPS)
        expected.update(chosen)
        gaps.update(margin)
    alone: dict[int, list[int]] = {}
    for row, ids in prompts.items():
        alone.update(greedy(ours, {row: ids}, STEPS)[0])
    batched, _ = greedy(ours, prompts, STEPS)
    notes = compare({"onnx alone": alone, "onnx batched": batched}, expected, gaps, NEAR_TIE)
    assert len(notes) <= 2, "too many near-ties: the test model is too flat to be useful"


def test_seeded_samples_match_torch_batched_and_alone(
    models: tuple[LoadedModel, LoadedModel],
) -> None:
    ours, reference = models
    prompts = {row: ours.tokenizer.encode(text) for row, text in enumerate(TEXTS)}
    seeds = {row: 1000 + row for row in prompts}
    expected, margins = sample(reference, prompts, STEPS, seeds)
    alone: dict[int, list[int]] = {}
    for row, ids in prompts.items():
        alone.update(sample(ours, {row: ids}, STEPS, {row: seeds[row]})[0])
    batched, _ = sample(ours, prompts, STEPS, seeds)
    compare({"onnx alone": alone, "onnx batched": batched}, expected, margins, CDF_MARGIN)
    # the draws really are random: the rows do not all follow the greedy path
    assert batched != greedy(ours, prompts, STEPS)[0]


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_engine_text_matches_torch(
    models: tuple[LoadedModel, LoadedModel], batch_size: int, do_sample: bool
) -> None:
    """Through the core's scheduler and sampler (continuous batching, per-record seeds): the
    same records as the PyTorch backend, text for text."""
    ours, reference = models
    options = {"max_new_tokens": STEPS, "do_sample": do_sample, "seed": 7, "ignore_eos": True}
    theirs = generate_records(reference, reference.tokenizer, TEXTS, batch_size=8, **options)
    got = generate_records(ours, ours.tokenizer, TEXTS, batch_size=batch_size, **options)
    differing = [
        i
        for i, (a, b) in enumerate(zip(theirs, got, strict=True))
        if a["completion"] != b["completion"]
    ]
    if differing:  # acceptable only where the protocol-level comparison finds a near-tie
        prompts = {i: ours.tokenizer.encode(TEXTS[i]) for i in differing}
        seeds = {i: theirs[i]["generation"]["seed"] for i in differing}
        if do_sample:
            expected, margins = sample(reference, prompts, STEPS, seeds)
            runs = {"onnx": sample(ours, prompts, STEPS, seeds)[0]}
            notes = compare(runs, expected, margins, CDF_MARGIN)
        else:
            expected, margins = greedy(reference, prompts, STEPS)
            notes = compare({"onnx": greedy(ours, prompts, STEPS)[0]}, expected, margins, NEAR_TIE)
        assert len(notes) == len(differing)
    assert [r["meta"]["completion_tokens"] for r in got] == [STEPS] * len(TEXTS)


def test_logprobs_and_scores_match_torch(models: tuple[LoadedModel, LoadedModel]) -> None:
    """Logprobs of the same tokens, prompt logprobs (ONNX through the protocol's default
    ``forward_all``, token by token) and scores agree with the PyTorch backend within 1e-4."""
    from gpt_simple_core.api import score

    ours, reference = models
    options = {"max_new_tokens": 6, "do_sample": False, "ignore_eos": True}
    options.update(logprobs=3, prompt_logprobs=2, batch_size=4)
    theirs = generate_records(reference, reference.tokenizer, TEXTS[:6], **options)
    got = generate_records(ours, ours.tokenizer, TEXTS[:6], **options)
    for a, b in zip(theirs, got, strict=True):
        if a["completion"] != b["completion"]:
            continue  # a near-tie (test_engine_text_matches_torch says which are allowed)
        for x, y in zip(a["logprobs"] + a["prompt_logprobs"][1:],
                        b["logprobs"] + b["prompt_logprobs"][1:], strict=True):  # fmt: skip
            assert x["token"] == y["token"] and abs(x["logprob"] - y["logprob"]) <= 1e-4
    requests = [{"context": TEXTS[0], "continuation": TEXTS[1]}, {"text": TEXTS[9]}]
    for a, b in zip(score(reference, reference.tokenizer, requests),
                    score(ours, ours.tokenizer, requests), strict=True):  # fmt: skip
        assert abs(a["score"]["logprob"] - b["score"]["logprob"]) <= 1e-4
