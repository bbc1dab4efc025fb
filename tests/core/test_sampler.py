"""The sampler, stage by stage, against distributions computed by hand on a small vocabulary.

Order: forbidden ids -> repetition penalty -> greedy | temperature -> top-k -> top-p -> min-p ->
one inverse-CDF draw in token-id order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpt_simple_core.engine.sampler import (
    apply_repetition_penalty,
    candidates,
    draw,
    forbidden_mask,
    next_token,
    next_tokens,
    nucleus,
)
from gpt_simple_core.records.schema import GenerationParams
from tests.core.helpers import generation_params as params

E = math.e


class FixedUniform:
    """A generator whose one uniform draw is chosen by the test."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self) -> float:
        return self.u


def distribution(logits, **overrides) -> dict[int, float]:
    ids, values = candidates(np.asarray(logits, dtype=np.float64), params(**overrides))
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    assert list(ids) == sorted(ids)  # token-id order
    return dict(zip(ids.tolist(), probs.tolist(), strict=True))


def assert_distribution(actual: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(actual) == sorted(expected)
    for token, p in expected.items():
        assert actual[token] == pytest.approx(p, rel=1e-9), token


def no_mask(n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool)


NOTHING_SEEN = np.array([], dtype=np.int64)


# Stages one at a time -------------------------------------------------------------------
def test_forbidden_ids_are_never_drawn_whatever_their_logits():
    logits = np.array([0.0, 0.0, 50.0, 0.0, 60.0], dtype=np.float32)
    forbidden = forbidden_mask(5, 4, (2,))  # id 4: padding band; id 2: pad
    for u in np.linspace(0, 0.999999, 101):
        token = next_token(logits, params(), NOTHING_SEEN, forbidden, FixedUniform(u))
        assert token in (0, 1, 3)
    assert next_token(logits, params(greedy=True), NOTHING_SEEN, forbidden, None) == 0


def test_repetition_penalty_ctrl_rule():
    logits = np.array([2.0, -2.0, 3.0, -1.0])
    apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    np.testing.assert_array_equal(logits, [1.0, -4.0, 3.0, -1.0])  # positive /, negative *
    unchanged = np.array([2.0, -2.0])
    apply_repetition_penalty(unchanged, np.array([0, 1]), 1.0)
    np.testing.assert_array_equal(unchanged, [2.0, -2.0])
    below_one = np.array([2.0, -2.0])
    apply_repetition_penalty(below_one, np.array([0, 1]), 0.5)  # < 1 encourages repeats
    np.testing.assert_array_equal(below_one, [4.0, -1.0])


def test_repetition_penalty_applies_to_seen_ids_in_the_pipeline():
    logits = np.array([3.0, 2.0, 0.0], dtype=np.float32)
    greedy = params(greedy=True, repetition_penalty=2.0)
    assert next_token(logits, greedy, NOTHING_SEEN, no_mask(3), None) == 0
    assert next_token(logits, greedy, np.array([0]), no_mask(3), None) == 1  # 3/2 < 2


def test_temperature_scales_logits():
    logits = [0.0, math.log(2), math.log(4)]
    assert_distribution(distribution(logits), {0: 1 / 7, 1: 2 / 7, 2: 4 / 7})
    assert_distribution(distribution(logits, temperature=0.5), {0: 1 / 21, 1: 4 / 21, 2: 16 / 21})
    assert_distribution(
        distribution(logits, temperature=2.0),
        {0: 1 / (1 + 2**0.5 + 2), 1: 2**0.5 / (3 + 2**0.5), 2: 2 / (3 + 2**0.5)},
    )


def test_top_k_keeps_ties_at_the_kth_value():
    logits = [1.0, 3.0, 3.0, 2.0, 0.0]
    assert sorted(distribution(logits, top_k=2)) == [1, 2]
    assert sorted(distribution(logits, top_k=3)) == [1, 2, 3]
    assert sorted(distribution(logits, top_k=1)) == [1, 2]  # both tied at the top
    tied = [1.0, 2.0, 2.0, 2.0, 0.0]
    assert sorted(distribution(tied, top_k=2)) == [1, 2, 3]
    assert sorted(distribution(logits, top_k=0)) == [0, 1, 2, 3, 4]  # 0 disables
    assert sorted(distribution(logits, top_k=99)) == [0, 1, 2, 3, 4]
    e3 = 2 * E**3 + E**2
    assert_distribution(distribution(logits, top_k=3), {1: E**3 / e3, 2: E**3 / e3, 3: E**2 / e3})


def test_top_k_ignores_masked_ids():
    logits = [-np.inf, 1.0, -np.inf, 0.5]
    assert sorted(distribution(logits, top_k=1)) == [1]
    assert sorted(distribution(logits, top_k=2)) == [1, 3]
    assert sorted(distribution(logits, top_k=3)) == [1, 3]


P4 = [0.5, 0.2, 0.2, 0.1]  # mass before, descending (ties by id): 0, .5, .7, .9


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        (0.05, [0]),  # at least one
        (0.45, [0]),
        (0.55, [0, 1]),  # id 1 before id 2: equal probability, lower id first
        (0.65, [0, 1]),
        (0.75, [0, 1, 2]),
        (0.95, [0, 1, 2, 3]),
        (1.0, [0, 1, 2, 3]),
    ],
)
def test_top_p_keeps_while_the_mass_before_is_below(top_p, kept):
    got = distribution(np.log(P4), top_p=top_p)
    total = sum(P4[i] for i in kept)
    assert_distribution(got, {i: P4[i] / total for i in kept})


def test_top_p_order_is_by_probability_not_id():
    probs = [0.1, 0.2, 0.6, 0.1]  # before, descending: id2 0, id1 .6, id0 .8, id3 .9
    assert sorted(distribution(np.log(probs), top_p=0.7)) == [1, 2]
    assert sorted(distribution(np.log(probs), top_p=0.85)) == [0, 1, 2]


@pytest.mark.parametrize(
    ("min_p", "kept"),
    [(0.0, [0, 1, 2, 3]), (0.19, [0, 1, 2, 3]), (0.3, [0, 1, 2]), (0.41, [0]), (0.99, [0])],
)
def test_min_p_is_relative_to_the_most_likely(min_p, kept):
    got = distribution(np.log(P4), min_p=min_p)
    total = sum(P4[i] for i in kept)
    assert_distribution(got, {i: P4[i] / total for i in kept})


def test_temperature_comes_before_top_p():
    logits = np.log([0.6, 0.3, 0.1])
    assert sorted(distribution(logits, top_p=0.65)) == [0, 1]
    # T=0.5 squares the odds: .36 : .09 : .01, so id 0 alone holds .78 > .65
    assert sorted(distribution(logits, top_p=0.65, temperature=0.5)) == [0]


def test_top_k_comes_before_top_p():
    probs = [0.4, 0.3, 0.2, 0.1]
    # alone, top_p .55 keeps ids 0 and 1 (mass before id 1: .4); after top_k=2 the mass is
    # renormalised to 4/7, 3/7, so the mass before id 1 is .57 and top_p .55 keeps id 0 only
    assert sorted(distribution(np.log(probs), top_p=0.55)) == [0, 1]
    assert sorted(distribution(np.log(probs), top_k=2, top_p=0.55)) == [0]
    assert sorted(distribution(np.log(probs), top_k=2, top_p=0.6)) == [0, 1]


# The draw -------------------------------------------------------------------------------
def test_inverse_cdf_draw_in_token_id_order():
    ids = np.array([1, 3, 4])
    values = np.log(np.array([0.2, 0.5, 0.3]))  # cdf .2, .7, 1.0 in id order
    eps = 1e-9
    assert draw(ids, values, 0.0) == 1
    assert draw(ids, values, 0.2 - eps) == 1
    assert draw(ids, values, 0.2 + eps) == 3
    assert draw(ids, values, 0.7 - eps) == 3
    assert draw(ids, values, 0.7 + eps) == 4
    assert draw(ids, values, 1.0 - eps) == 4
    assert draw(np.array([7]), np.array([0.0]), 0.999) == 7
    # exactly on a boundary: the first id whose cumulative probability *exceeds* u
    assert draw(np.array([3, 8]), np.array([0.0, 0.0]), 0.5) == 8
    # so a token whose probability underflows to 0 is never drawn, even with u = 0
    assert draw(np.array([1, 2]), np.array([-1000.0, 0.0]), 0.0) == 2


def test_greedy_is_argmax_with_ties_to_the_lowest_id():
    logits = np.array([1.0, 5.0, 5.0, 2.0], dtype=np.float32)
    greedy = params(greedy=True, temperature=0.01, top_k=1, top_p=0.1)
    assert next_token(logits, greedy, NOTHING_SEEN, no_mask(4), None) == 1
    logits = np.array([7.0, 5.0, 7.0], dtype=np.float32)
    assert next_token(logits, greedy, NOTHING_SEEN, no_mask(3), None) == 0


def test_nan_logits_raise():
    logits = np.array([0.0, np.nan, 1.0], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        next_token(logits, params(), NOTHING_SEEN, no_mask(3), FixedUniform(0.5))
    with pytest.raises(ValueError, match="NaN"):
        next_token(logits, params(greedy=True), NOTHING_SEEN, no_mask(3), None)


def test_everything_masked_raises():
    logits = np.array([1.0, 2.0], dtype=np.float32)
    everything = np.ones(2, dtype=bool)
    with pytest.raises(ValueError, match="every token is masked"):
        next_token(logits, params(), NOTHING_SEEN, everything, FixedUniform(0.5))
    with pytest.raises(ValueError, match="every token is masked"):
        next_token(logits, params(greedy=True), NOTHING_SEEN, everything, None)


# Every stage at once ---------------------------------------------------------------------
def pipeline_logits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8 ids: 6 is the pad, 7 the padding band (both with the highest logits)."""
    logits = np.array([3.0, 2.0, 2.0, 1.0, 0.0, -1.0, 5.0, 4.0], dtype=np.float32)
    forbidden = forbidden_mask(8, 7, (6,))
    seen = np.array([0, 5])  # penalty 1.5: id 0 3 -> 2, id 5 -1 -> -1.5
    return logits, forbidden, seen


@pytest.mark.parametrize(
    ("min_p", "expected"),
    [
        # after penalty [2, 2, 2, 1, 0, -1.5]; T=2 -> [1, 1, 1, .5, 0, -.75]; top_k=5 drops id 5;
        # probabilities .2516 x3, .1526, .0926: top_p .8 keeps ids 0-3 (mass before id 4: .907)
        (0.5, {0: E, 1: E, 2: E, 3: E**0.5}),  # e^.5/e = .61 >= .5: id 3 stays
        (0.65, {0: E, 1: E, 2: E}),  # .61 < .65: id 3 goes
    ],
)
def test_all_stages_against_a_hand_computed_distribution(min_p, expected):
    logits, forbidden, seen = pipeline_logits()
    p = params(repetition_penalty=1.5, temperature=2.0, top_k=5, top_p=0.8, min_p=min_p)
    total = sum(expected.values())
    expected = {i: w / total for i, w in expected.items()}

    row = logits.astype(np.float64)
    row[forbidden] = -np.inf
    apply_repetition_penalty(row, seen, p.repetition_penalty)
    assert_distribution(distribution(row, **_fields(p)), expected)

    # next_token draws through the same distribution, in id order: probe every boundary
    cumulative = np.cumsum([expected[i] for i in sorted(expected)])
    ids = sorted(expected)
    for position, boundary in enumerate(cumulative[:-1]):
        below = next_token(logits, p, seen, forbidden, FixedUniform(boundary - 1e-7))
        above = next_token(logits, p, seen, forbidden, FixedUniform(boundary + 1e-7))
        assert (below, above) == (ids[position], ids[position + 1])
    assert next_token(logits, p, seen, forbidden, FixedUniform(0.0)) == ids[0]
    assert next_token(logits, p, seen, forbidden, FixedUniform(1 - 1e-12)) == ids[-1]


def _fields(p: GenerationParams) -> dict:
    return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p}


def test_a_real_generator_follows_the_distribution():
    """Frequencies of 4000 draws match the hand-computed probabilities."""
    logits = np.log(np.array([0.5, 0.2, 0.2, 0.1], dtype=np.float32))
    rng = np.random.default_rng(0)
    counts = np.bincount(
        [next_token(logits, params(), NOTHING_SEEN, no_mask(4), rng) for _ in range(4000)],
        minlength=4,
    )
    np.testing.assert_allclose(counts / 4000, [0.5, 0.2, 0.2, 0.1], atol=0.03)


# The batched path: identical to next_token, row by row --------------------------------------
def _rows(seed: int, n: int, vocab: int) -> np.ndarray:
    """Logits with the hazards of real ones: repeated values (ties), -inf, a wide range."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, vocab)) * 4).astype(np.float32)
    logits[:, rng.integers(0, vocab, size=vocab // 4)] = np.round(logits[:, :1], 1)  # ties
    logits[1, : vocab - 3] = -np.inf  # fewer finite logits than most top_k
    logits[2, 5] = np.inf
    logits[3, 7] = np.nan
    logits[4, :] = -np.inf  # nothing left at all
    logits[5, :] = 1.0  # everything tied
    return logits


BATCH_PARAMS = [
    {"greedy": True},
    {"greedy": True, "repetition_penalty": 1.3},
    {},
    {"top_k": 50, "top_p": 0.95, "temperature": 0.8},  # the CLI's defaults
    {"top_k": 5},
    {"top_k": 1},
    {"top_k": 10_000},  # more than the vocabulary
    {"top_k": 40, "min_p": 0.05, "temperature": 1.7},
    {"top_p": 0.5},  # top-p over the whole vocabulary: a growing head
    {"top_p": 0.999, "temperature": 3.0},
    {"top_k": 20, "repetition_penalty": 1.5},
    {"top_k": 20, "temperature": 1e-250},  # outside the fast path's temperatures
]


@pytest.mark.parametrize("vocab", [64, 3000])
def test_batched_sampling_equals_one_row_at_a_time(vocab):
    n = 24
    logits = _rows(vocab, n, vocab)
    forbidden = forbidden_mask(vocab, vocab - 2, (3,))
    seen = [np.array([0, 3, 9]) if i % 2 else NOTHING_SEEN for i in range(n)]
    for index, overrides in enumerate(BATCH_PARAMS):
        ps = [params(seed=index, **overrides) for _ in range(n)]
        expected: list = []
        for row in range(n):
            rng = np.random.default_rng(row)
            try:
                expected.append(next_token(logits[row].copy(), ps[row], seen[row], forbidden, rng))
            except ValueError as exc:
                expected.append(str(exc))
        got = next_tokens(
            logits.copy(), ps, seen, forbidden, [np.random.default_rng(r) for r in range(n)]
        )
        got = [str(t) if isinstance(t, ValueError) else t for t in got]
        assert got == expected, overrides
        assert "the model produced NaN logits" in got
        assert "every token is masked or has a non-finite logit" in got


def test_batched_sampling_mixes_parameters_and_advances_each_stream_once():
    vocab = 500
    logits = _rows(7, len(BATCH_PARAMS), vocab)
    logits[:6] = np.random.default_rng(8).standard_normal((6, vocab))  # no hazards up front
    forbidden = forbidden_mask(vocab, vocab, ())
    ps = [params(seed=i, **o) for i, o in enumerate(BATCH_PARAMS)]
    seen = [NOTHING_SEEN] * len(ps)
    batched = [np.random.default_rng(i) for i in range(len(ps))]
    alone = [np.random.default_rng(i) for i in range(len(ps))]
    got = next_tokens(logits.copy(), ps, seen, forbidden, batched)
    for row, p in enumerate(ps):
        try:
            token = next_token(logits[row].copy(), p, seen[row], forbidden, alone[row])
        except ValueError:
            assert isinstance(got[row], ValueError)
            continue
        assert got[row] == token, p
    # the generators stand where one-row sampling leaves them: the next draws agree
    assert [g.random() for g in batched] == [g.random() for g in alone]


def _top_p_by_full_sort(values: np.ndarray, top_p: float) -> list[int]:
    """The rule with a full sort: descending probability, ties by position."""
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    order = np.lexsort((np.arange(values.size), -values))
    kept, mass = [], 0.0
    for i in order:
        if kept and mass >= top_p:
            break
        kept.append(int(i))
        mass += probs[i]
    return sorted(kept)


@pytest.mark.parametrize("top_p", [0.01, 0.3, 0.9, 0.99, 0.999999])
@pytest.mark.parametrize("spread", [0.1, 1.0, 8.0])  # flat (huge nucleus) to peaked
def test_top_p_with_a_partial_sort_keeps_what_a_full_sort_keeps(top_p, spread):
    rng = np.random.default_rng(int(spread * 10))
    values = np.round(rng.standard_normal(5000) * spread, 2)  # rounding makes many ties
    ids = np.arange(5000)
    kept, _ = nucleus(ids, values, params(top_p=top_p))
    assert kept.tolist() == _top_p_by_full_sort(values, top_p)
