"""Driving a :class:`LoadedModel` greedily or by seeded sampling (directly, or through the
core's scheduler), and comparing two runs.

Floating-point rounding differs between batch shapes and between backends, so two correct runs
may choose different tokens where the choice is a near-tie. A divergence is accepted only
there, and reported:

* greedy: the reference's top-2 logit gap at the diverging step is below :data:`NEAR_TIE`;
* sampled: the reference's uniform draw lies within :data:`CDF_MARGIN` of a boundary of the
  cumulative distribution (in token-id order, as the core's sampler draws).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gpt_simple_core.engine.sampler import (
    apply_repetition_penalty,
    candidates,
    draw,
    forbidden_mask,
)
from gpt_simple_core.engine.scheduler import GroupScheduler
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import LoadedModel
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.schema import GenerationParams

NEAR_TIE = 1e-4
CDF_MARGIN = 1e-5

#: Plain sampling at temperature 1 (no top-k/top-p/min-p): every token keeps a chance.
PLAIN_SAMPLING = GenerationParams(
    max_new_tokens=1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    greedy=False,
    repetition_penalty=1.0,
    seed=0,
    return_full_text=False,
    stop=(),
    stop_token_ids=(),
    ignore_eos=False,
)


def _decode(
    model: LoadedModel,
    prompts: Mapping[int, Sequence[int]],
    steps: int,
    seeds: Mapping[int, int] | None,
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    rows = list(prompts)
    chosen: dict[int, list[int]] = {row: [] for row in rows}
    margins: dict[int, list[float]] = {row: [] for row in rows}
    rngs = {row: np.random.default_rng(seeds[row]) for row in rows} if seeds else {}
    feed = [list(prompts[row]) for row in rows]
    forbidden = None
    for _ in range(steps):
        logits = model.forward(rows, feed)
        if forbidden is None:
            tokenizer = model.tokenizer
            forbidden = forbidden_mask(logits.shape[1], len(tokenizer), tokenizer.never_generate)
        feed = []
        for row, row_logits in zip(rows, logits, strict=True):
            values = row_logits.astype(np.float64)
            values[forbidden] = -np.inf
            if seeds is None:
                top2 = np.sort(values)[-2:]
                token, margin = int(np.argmax(values)), float(top2[1] - top2[0])
            else:
                ids, kept = candidates(values, PLAIN_SAMPLING)
                uniform = float(rngs[row].random())
                token = draw(ids, kept, uniform)
                cdf = np.cumsum(np.exp(kept - kept.max()))
                margin = float(np.abs(cdf / cdf[-1] - uniform).min())
            chosen[row].append(token)
            margins[row].append(margin)
            feed.append([token])
    model.release(rows)
    return chosen, margins


def greedy(
    model: LoadedModel, prompts: Mapping[int, Sequence[int]], steps: int
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    """Greedy-decode every row of ``prompts`` together for ``steps`` tokens (forbidden ids
    masked as the core does).

    Returns the chosen tokens per row and, per step, the gap between the top two logits (to
    tell a real divergence from a near-tie). Rows are released at the end.
    """
    return _decode(model, prompts, steps, None)


def sample(
    model: LoadedModel, prompts: Mapping[int, Sequence[int]], steps: int, seeds: Mapping[int, int]
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    """Like :func:`greedy` but drawing from the full distribution with one seeded generator per
    row (one uniform per token, as the core's sampler); the margins are each draw's distance
    to the nearest cumulative-probability boundary."""
    return _decode(model, prompts, steps, seeds)


def assert_same_or_near_tie(
    expected: list[int],
    expected_margins: list[float],
    got: list[int],
    label: str,
    threshold: float = NEAR_TIE,
) -> str | None:
    """Tokens must agree; a first divergence is accepted only where the reference run's margin
    (top-2 gap, or distance to a CDF boundary with ``threshold=CDF_MARGIN``) is below
    ``threshold``. Returns a note describing an accepted divergence."""
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        if a != b:
            margin = expected_margins[i]
            message = f"{label}: step {i} chose {b}, expected {a} (margin {margin})"
            assert margin < threshold, message
            return f"{label}: diverged at step {i} on a near-tie (margin {margin:.2e})"
    return None


# Through the core's scheduler ----------------------------------------------------------
def planned(prompts: Sequence[str], params: Sequence[GenerationParams]) -> list[PlannedRecord]:
    return [
        PlannedRecord.from_params(Record(i, i + 1, prompt, {"prompt": prompt}), p)
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))
    ]


def run_tokens(
    model: LoadedModel, records: Sequence[PlannedRecord], batch_size: int
) -> dict[int, list[int]]:
    """Generated ids of every record, run through the engine with ``batch_size`` slots."""
    out: dict[int, list[int]] = {}

    def done(seq) -> None:
        out[seq.index] = list(seq.generated)

    def failed(item: PlannedRecord, exc: BaseException) -> None:
        raise AssertionError(f"record {item.record.index} failed: {exc}") from exc

    GroupScheduler(model, on_done=done, on_error=failed, batch_size=batch_size).run(records)
    return out


def _step_logits(model: LoadedModel, prefix: Sequence[int]) -> np.ndarray:
    """Fresh single-row logits after ``prefix`` (row 0 is released afterwards)."""
    logits = model.forward([0], [list(prefix)])[0]
    model.release([0])
    return logits


def explain_divergence(
    model: LoadedModel,
    prompt_ids: Sequence[int],
    params: GenerationParams,
    reference: Sequence[int],
    other: Sequence[int],
) -> str | None:
    """None when the runs agree; a note when they part at an acceptable near-tie; otherwise
    an AssertionError saying where and why the divergence is not a tie."""
    step = next((i for i, (a, b) in enumerate(zip(reference, other, strict=False)) if a != b), None)
    if step is None:
        assert len(reference) == len(other), f"lengths differ: {len(reference)} vs {len(other)}"
        return None
    a, b = reference[step], other[step]
    logits = _step_logits(model, [*prompt_ids, *reference[:step]]).astype(np.float64)
    tokenizer = model.tokenizer
    logits[forbidden_mask(logits.size, len(tokenizer), tokenizer.never_generate)] = -np.inf
    seen = np.array(sorted({*prompt_ids, *reference[:step]}), dtype=np.int64)
    apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        gap = abs(logits[a] - logits[b])
        assert gap < NEAR_TIE, f"greedy step {step}: {a} vs {b}, logit gap {gap:.2e}"
        return f"greedy near-tie at step {step} (gap {gap:.1e})"
    uniform = np.random.default_rng(params.seed).random(step + 1)[-1]
    ids, values = candidates(logits, params)
    cdf = np.cumsum(np.exp(values - values.max()))
    cdf /= cdf[-1]
    where = {int(t): i for i, t in enumerate(ids)}
    assert a in where and b in where, f"sampled step {step}: {a} or {b} not a candidate"
    lo, hi = sorted((where[a], where[b]))
    assert hi == lo + 1, f"sampled step {step}: {a} and {b} are not neighbours in the CDF"
    margin = abs(uniform - cdf[lo])
    assert margin < CDF_MARGIN, (
        f"sampled step {step}: draw {uniform} is {margin:.1e} from {cdf[lo]}"
    )
    return f"sampled near-tie at step {step} (draw within {margin:.1e} of a boundary)"
