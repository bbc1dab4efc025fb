"""The benchmark's own arithmetic (its figures go into docs/performance.md and issues)."""

from __future__ import annotations

import pytest

from benchmarks.suite import greedy_agreement


def test_greedy_agreement_counts_tokens_before_each_first_divergence() -> None:
    reference = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
    other = [[1, 2, 0, 4], [5, 6, 7, 8], [0, 9, 9, 9]]  # agrees 2, 4 and 0 tokens
    share, same = greedy_agreement(reference, other)
    assert share == pytest.approx(6 / 12) and same == "1/3"
    assert greedy_agreement(reference, reference) == (1.0, "3/3")
    with pytest.raises(ValueError):
        greedy_agreement(reference, other[:2])  # a missing sequence is not agreement
