"""Continuous batching's admission window, length bucketing and memory-budget sizing, with the
toy backend driven through :class:`GroupScheduler` directly.

Whatever the schedule, a record's completion depends only on its prompt, parameters and seed.
"""

from __future__ import annotations

import random

import pytest

from gpt_simple_core.engine import capacity
from gpt_simple_core.engine.capacity import plan_capacity
from gpt_simple_core.engine.scheduler import WINDOW_FACTOR, GroupScheduler, choose_admissions
from gpt_simple_core.engine.token_sequence import TokenSequence
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import LoadRequest
from gpt_simple_core.records.parse import Record
from tests.core.helpers import generation_params
from tests.support.toy_backend import ALPHABET, ToyModel


def planned_records(count: int, seed: int = 0) -> list[PlannedRecord]:
    """Prompts of 1..40 characters (one token each) and mixed sampling parameters."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = "".join(rng.choice(ALPHABET[:26]) for _ in range(rng.randint(1, 40)))
        params = generation_params(
            seed=100 + i,
            max_new_tokens=rng.randint(1, 12),
            temperature=rng.choice([0.7, 1.0, 1.5]),
            top_k=rng.choice([0, 5, 50]),
            top_p=rng.choice([1.0, 0.9]),
            greedy=rng.random() < 0.2,
            repetition_penalty=rng.choice([1.0, 1.0, 1.2]),
        )
        out.append(PlannedRecord.from_params(Record(i, i + 1, prompt, {"prompt": prompt}), params))
    return out


class Run:
    """One scheduler run over a fresh toy model: completions by record index, and order."""

    def __init__(self, records: list[PlannedRecord], **options) -> None:
        self.model = ToyModel({}, LoadRequest())
        self.reserved: list[tuple[int, int]] = []
        self.model.reserve = lambda rows, tokens: self.reserved.append((rows, tokens))
        self.call_sizes: list[list[int]] = []  # tokens per row of every forward call
        forward = self.model.forward

        def counting_forward(rows, tokens):
            self.call_sizes.append([len(t) for t in tokens])
            return forward(rows, tokens)

        self.model.forward = counting_forward
        self.done: dict[int, str] = {}
        self.admitted: list[int] = []  # record indices in admission order
        self.scheduler = GroupScheduler(
            self.model,
            on_done=self._done,
            on_error=lambda r, e: pytest.fail(f"record {r.record.index}: {e}"),
            **options,
        )
        original = TokenSequence.__init__

        def spy(seq: TokenSequence, planned: PlannedRecord, *args, **kwargs) -> None:
            self.admitted.append(planned.record.index)
            original(seq, planned, *args, **kwargs)

        TokenSequence.__init__ = spy  # type: ignore[method-assign]
        try:
            self.scheduler.run(records)
        finally:
            TokenSequence.__init__ = original  # type: ignore[method-assign]

    def _done(self, seq: TokenSequence) -> None:
        self.done[seq.index] = seq.text()


def test_seeded_completions_do_not_depend_on_slots_or_admission_order():
    records = planned_records(60)
    reference = Run(records, batch_size=1, bucketing=False).done
    assert len(reference) == 60 and len(set(reference.values())) > 40
    for options in (
        {"batch_size": 3},
        {"batch_size": 8, "bucketing": False},
        {"batch_size": 13},
        {},  # slots from the budget (no KV size from the toy: the default)
        {"batch_size": 4, "max_batch_tokens": 7},  # prompts prefilled in chunks
    ):
        assert Run(records, **options).done == reference, options
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    assert Run(shuffled, batch_size=5).done == reference


def test_bucketing_reorders_admissions_only_within_the_window():
    records = planned_records(80, seed=3)
    plain = Run(records, batch_size=4, bucketing=False)
    assert plain.admitted == list(range(80))
    bucketed = Run(records, batch_size=4)
    assert bucketed.admitted != list(range(80))  # it did reorder
    # a record is admitted only while fewer than a window's worth of records wait before it
    for position, index in enumerate(bucketed.admitted):
        waiting_before = set(range(index)) - set(bucketed.admitted[:position])
        assert len(waiting_before) < WINDOW_FACTOR * 4, (position, index)


def prefill_padding(run: Run) -> int:
    """Padding tokens of the prefill calls, were every row padded to the call's longest."""
    return sum(max(sizes) * len(sizes) - sum(sizes) for sizes in run.call_sizes if max(sizes) > 1)


def test_the_oldest_waiting_record_is_admitted_first():
    lengths = [50, 3, 4, 5, 49, 2, 51]
    assert choose_admissions(lengths, 3) == [0, 4, 6]  # the outlier head still goes first
    assert choose_admissions(lengths, 3, bucketing=False) == [0, 1, 2]
    assert choose_admissions([7, 9, 5], 2) == [0, 1]  # equal distance: the older wins
    assert choose_admissions(lengths, 0) == []
    assert choose_admissions([4, 4], 5) == [0, 1]


def test_slots_and_call_tokens_follow_the_memory_budget():
    model = ToyModel({}, LoadRequest())
    model.kv_bytes_per_token = 1000
    model.memory_budget = 1_000_000
    got = plan_capacity(model, longest_row=100)
    assert got.slots == 7  # 750 kB of KV / (100 tokens x 1000 bytes)
    assert got.call_tokens == capacity.DEFAULT_CALL_TOKENS
    model.activation_bytes_per_token = 100
    assert plan_capacity(model, longest_row=100).call_tokens == 2500  # the other 250 kB
    model.activation_bytes_per_token = 1
    assert plan_capacity(model, longest_row=100).call_tokens == capacity.MAX_CALL_TOKENS
    assert plan_capacity(model, longest_row=10).slots == capacity.DEFAULT_MAX_SLOTS
    model.max_batch_size = 200
    assert plan_capacity(model, longest_row=10).slots == 75
    assert plan_capacity(model, longest_row=10**6).slots == 1  # always at least one row
    # the user's settings win
    got = plan_capacity(model, longest_row=100, batch_size=3, max_batch_tokens=5)
    assert (got.slots, got.call_tokens) == (3, 5)
    # a decode step of every slot fits in one call
    model.activation_bytes_per_token = 10**6
    assert plan_capacity(model, longest_row=10, batch_size=400).call_tokens == 400


def test_the_model_is_told_the_rows_and_their_length_once():
    records = planned_records(30, seed=5)
    run = Run(records, batch_size=6)
    longest = max(len(r.record.prompt) for r in records)
    longest += max(r.params.max_new_tokens for r in records)
    assert run.reserved == [(6, longest)]


def test_a_small_group_reserves_no_more_slots_than_it_has_records():
    model = ToyModel({}, LoadRequest())
    model.kv_bytes_per_token = 1000
    model.memory_budget = 1 << 30
    assert plan_capacity(model, longest_row=100, records=1).slots == 1
    assert plan_capacity(model, longest_row=100, records=5, batch_size=8).slots == 5
    assert plan_capacity(model, longest_row=100, records=500).slots == capacity.DEFAULT_MAX_SLOTS
    records = planned_records(3, seed=2)
    longest = max(len(r.record.prompt) for r in records)
    longest += max(r.params.max_new_tokens for r in records)
    assert Run(records).reserved == [(3, longest)]


def test_bucketing_pads_prefill_less():
    records = planned_records(200, seed=9)
    bucketed = Run(records, batch_size=16)
    plain = Run(records, batch_size=16, bucketing=False)
    assert bucketed.done == plain.done
    assert prefill_padding(bucketed) < prefill_padding(plain) / 2
