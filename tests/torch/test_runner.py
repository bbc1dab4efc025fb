"""The protocol side: per-row KV cache, batching, slot reuse, context overflow."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_simple_core.protocol import OVERFLOW_EXTRAPOLATE, OVERFLOW_TRUNCATE
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_lm_format.tokenizer import HFTokenizer
from gpt_simple_torch.plugin import TorchModel
from tests.support.checkpoints import small_config
from tests.support.near_ties import assert_same_or_near_tie, greedy
from tests.torch.helpers import build_gpt, full_logits

pytestmark = pytest.mark.torch

CACHE_TOLERANCE = 2e-5  # cached and uncached paths use different attention kernels


def prompt(seed: int, length: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 300, size=length).tolist()


@pytest.fixture
def runner(config: ModelConfig, tokenizer: HFTokenizer) -> TorchModel:
    module, _ = build_gpt(config)
    return TorchModel.from_module(module, tokenizer)


class Sequences:
    """Drives a :class:`TorchModel` and checks every answer against a full forward."""

    def __init__(self, model: TorchModel) -> None:
        self.model = model
        self.ids: dict[int, list[int]] = {}

    def call(self, feed: dict[int, list[int]]) -> None:
        rows = list(feed)
        logits = self.model.forward(rows, [feed[row] for row in rows])
        assert logits.shape == (len(rows), self.model.config.vocab_size)
        assert logits.dtype == np.float32
        for row, row_logits in zip(rows, logits, strict=True):
            self.ids.setdefault(row, []).extend(feed[row])
            expected = full_logits(self.model.module, self.ids[row])
            assert np.abs(row_logits - expected).max() <= CACHE_TOLERANCE, f"row {row}"
            assert self.model.cached_length(row) == len(self.ids[row])  # true positions

    def release(self, *rows: int) -> None:
        self.model.release(rows)
        for row in rows:
            del self.ids[row]


def test_prefill_then_decode_matches_full_forward(runner: TorchModel) -> None:
    seqs = Sequences(runner)
    seqs.call({0: prompt(1, 7)})
    for token in prompt(2, 5):
        seqs.call({0: [token]})


def test_prompt_in_chunks(runner: TorchModel) -> None:
    seqs = Sequences(runner)
    seqs.call({3: prompt(1, 5)})
    seqs.call({3: prompt(2, 4)})  # a later multi-token chunk continues at position 5
    seqs.call({3: [7]})


def test_batch_of_rows_joining_and_leaving(runner: TorchModel) -> None:
    seqs = Sequences(runner)
    # different prompt lengths in one call (padded to the longest)
    seqs.call({0: prompt(1, 3), 1: prompt(2, 9), 2: prompt(3, 1), 3: prompt(4, 6)})
    for step in range(3):
        seqs.call({row: [10 + step + row] for row in range(4)})
    # row 2 leaves; its slot is reused by a new sequence while the others keep decoding,
    # and the new prompt arrives in the same call as their one-token steps
    seqs.release(2)
    seqs.call({0: [5], 1: [6], 2: prompt(5, 4), 3: [7]})
    # rows out of order and not contiguous (read through a gather, answered in call order)
    seqs.call({3: [8], 0: [9]})
    seqs.call({2: [1], 1: [2], 3: [3], 0: [4]})
    # a row id beyond every slot so far grows the cache while others are live
    seqs.call({9: prompt(6, 5), 1: [11]})
    seqs.release(0, 1)
    seqs.call({0: prompt(7, 2), 9: [12], 3: [13]})


def test_released_rows_leave_the_live_cache_slots_packed(runner: TorchModel) -> None:
    """Live rows keep cache slots 0..n-1 (a decode step of all of them reads a view, not a
    gather), and a row moved into a hole keeps its exact state."""
    seqs = Sequences(runner)
    seqs.call({row: prompt(row, 3 + row) for row in range(6)})
    seqs.release(1, 3)
    assert sorted(runner._slot.values()) == list(range(4))
    seqs.call({0: [1], 2: [2], 4: [3], 5: [4]})  # logits still equal a full forward
    seqs.call({7: prompt(9, 4), 5: [6]})
    assert runner._slot[7] == 4
    seqs.release(0, 2, 4, 5, 7)
    assert runner._slot == {} and runner.cached_length(5) == 0


def test_cache_grows_past_its_first_block(config: ModelConfig, tokenizer: HFTokenizer) -> None:
    module, _ = build_gpt(config)
    model = TorchModel.from_module(module, tokenizer)
    model._cache.block = 8  # force several reallocations
    seqs = Sequences(model)
    seqs.call({0: prompt(1, 6), 1: prompt(2, 2)})
    for step in range(12):
        seqs.call({0: [step], 1: [step + 1]})
    assert model._cache.capacity >= 18


def test_batch_invariance_of_greedy_decoding(runner: TorchModel) -> None:
    """A row's greedy tokens do not depend on which rows share its batch."""
    prompts = {row: prompt(20 + row, 2 + 3 * row) for row in range(6)}
    together, _ = greedy(runner, prompts, steps=10)
    notes = []
    for row, ids in prompts.items():
        alone, alone_gaps = greedy(runner, {row: ids}, steps=10)
        note = assert_same_or_near_tie(alone[row], alone_gaps[row], together[row], f"row {row}")
        notes.append(note)
    accepted = [note for note in notes if note]
    if accepted:  # report, do not hide, the near-ties the helper let through
        print("\n".join(accepted))


def test_release_makes_a_row_start_empty(runner: TorchModel) -> None:
    first = runner.forward([0], [prompt(1, 5)])
    runner.forward([0], [[3]])
    runner.release([0])
    again = runner.forward([0], [prompt(1, 5)])
    np.testing.assert_array_equal(first, again)


def test_forward_rejects_malformed_calls(runner: TorchModel) -> None:
    with pytest.raises(ValueError, match="distinct"):
        runner.forward([1, 1], [[1], [2]])
    with pytest.raises(ValueError, match="at least one"):
        runner.forward([0], [[]])
    assert runner.forward([], []).shape == (0, runner.config.vocab_size)


def overflow_model(vocab_tokens: int, tokenizer: HFTokenizer, policy: str) -> TorchModel:
    config = small_config(vocab_tokens, n_positions=12)
    module, _ = build_gpt(config, seed=9)
    return TorchModel.from_module(module, tokenizer, context_overflow=policy)


def test_extrapolation_keeps_going_past_n_positions(
    vocab_tokens: int, tokenizer: HFTokenizer
) -> None:
    model = overflow_model(vocab_tokens, tokenizer, OVERFLOW_EXTRAPOLATE)
    assert model.context_overflow == OVERFLOW_EXTRAPOLATE and model.context_length == 12
    seqs = Sequences(model)  # compares with a full forward over every token so far
    seqs.call({0: prompt(1, 10), 1: prompt(2, 14)})
    for step in range(5):
        seqs.call({0: [step], 1: [step + 3]})
    assert len(seqs.ids[1]) == 19


def test_truncation_recomputes_the_last_window(vocab_tokens: int, tokenizer: HFTokenizer) -> None:
    model = overflow_model(vocab_tokens, tokenizer, OVERFLOW_TRUNCATE)
    limit = model.context_length
    ids = {0: prompt(1, 10), 1: prompt(2, 15)}  # row 1 starts over the limit
    logits = model.forward([0, 1], [ids[0], ids[1]])
    for step in range(5):
        for i, row in enumerate((0, 1)):
            expected = full_logits(model.module, ids[row][-limit:])
            assert np.abs(logits[i] - expected).max() <= 2e-5, f"row {row} step {step}"
            if len(ids[row]) > limit:  # the window, not the whole sequence, was used
                assert np.abs(logits[i] - full_logits(model.module, ids[row])).max() > 1e-3
        for row in (0, 1):
            ids[row].append(step + row)
        logits = model.forward([0, 1], [[ids[0][-1]], [ids[1][-1]]])
    assert model.cached_length(1) == limit
