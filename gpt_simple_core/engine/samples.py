"""Several samples of one record (``generation.n``): the record is run as ``n`` rows, sample
``j`` with the seed :func:`~gpt_simple_core.records.seeds.sample_seed` gives it (the first
keeps the record's own), and the rows' results are gathered into one output record.

Each sample is a row of its own through the scheduler; when the samples of a record are
prefilled in the same step and the model copies rows (``LoadedModel.copy_row``), the prompt
is prefilled once and the other samples start from a copy of that row's state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from gpt_simple_core.engine.token_sequence import TokenSequence
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.records.seeds import sample_seed


def expand(records: Iterable[PlannedRecord]) -> Iterator[PlannedRecord]:
    """Each record, or for ``n`` > 1 its ``n`` samples (records of ``n`` 1, in order)."""
    for planned in records:
        n = planned.params.n
        if n == 1:
            yield planned
            continue
        fields = {**planned.fields, "n": 1}
        for j in range(n):
            sample = PlannedRecord(planned.record, fields, sample_seed(planned.seed, j))
            sample.of = planned  # the record the output is written for
            sample.sample = j
            yield sample


def original(planned: PlannedRecord) -> PlannedRecord:
    """The record a sample belongs to (itself when it is no sample)."""
    return planned.of or planned


class Gatherer:
    """Collects the samples of records with ``n`` > 1 until each record is complete."""

    def __init__(self) -> None:
        self._done: dict[int, list[TokenSequence]] = {}
        self._failed: set[int] = set()

    def done(self, seq: TokenSequence) -> list[TokenSequence] | None:
        """``seq``'s record's samples, in sample order, once all are in (else None; also
        None for a record that failed already)."""
        index, n = seq.index, original(seq.planned).params.n
        if index in self._failed:
            return None
        samples = self._done.setdefault(index, [])
        samples.append(seq)
        if len(samples) < n:
            return None
        del self._done[index]
        return sorted(samples, key=lambda s: s.planned.sample)

    def failed(self, planned: PlannedRecord) -> bool:
        """Whether this is the first failure of ``planned``'s record (its error is written
        once; the other samples' results are dropped)."""
        index = planned.record.index
        if index in self._failed:
            return False
        self._failed.add(index)
        self._done.pop(index, None)
        return True
