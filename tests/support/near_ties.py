"""Driving a :class:`LoadedModel` greedily or by seeded sampling, and comparing two runs.

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

from gpt_simple_core.engine.sampler import candidates, draw, forbidden_mask
from gpt_simple_core.protocol import LoadedModel
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
