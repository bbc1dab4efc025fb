"""Running records through the core's scheduler on a real backend, and judging divergences.

Floating-point rounding differs between batch shapes (and between backends), so two runs of
one record may legitimately part ways where the choice was a coin toss. A divergence is
accepted only there: for greedy decoding, where the top-2 logit gap is below ``GREEDY_GAP``;
for sampling, where the record's uniform draw lies within ``SAMPLED_MARGIN`` of the
cumulative-probability boundary between the two tokens. Anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt_simple_core.engine.sampler import (
    apply_repetition_penalty,
    candidates,
    forbidden_mask,
)
from gpt_simple_core.engine.scheduler import GroupScheduler
from gpt_simple_core.plan.planner import PlannedRecord
from gpt_simple_core.protocol import LoadedModel
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.schema import GenerationParams

GREEDY_GAP = 1e-4
SAMPLED_MARGIN = 1e-5


def planned(prompts: Sequence[str], params: Sequence[GenerationParams]) -> list[PlannedRecord]:
    return [
        PlannedRecord(Record(i, i + 1, prompt, {"prompt": prompt}), p)
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
        assert gap < GREEDY_GAP, f"greedy step {step}: {a} vs {b}, logit gap {gap:.2e}"
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
    assert margin < SAMPLED_MARGIN, (
        f"sampled step {step}: draw {uniform} is {margin:.1e} from {cdf[lo]}"
    )
    return f"sampled near-tie at step {step} (draw within {margin:.1e} of a boundary)"
