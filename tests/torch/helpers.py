"""Building torch models from the numpy checkpoint builders, and a greedy protocol driver."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from gpt_simple_core.checkpoints.model_config import ModelConfig
from gpt_simple_core.protocol import LoadedModel
from gpt_simple_torch.model import GPT
from tests.support.checkpoints import random_state_dict

# Large enough that attention is peaked (scores of several units), so RoPE and masking
# mistakes change the logits visibly; the builders' default 0.02 leaves attention near uniform.
WEIGHT_SCALE = 0.2
NEAR_TIE = 1e-4


def build_gpt(config: ModelConfig, seed: int = 0) -> tuple[GPT, dict[str, np.ndarray]]:
    """A fp32 CPU :class:`GPT` with seeded random weights, and those weights."""
    weights = random_state_dict(config, seed=seed, scale=WEIGHT_SCALE)
    tensors = {key: torch.from_numpy(value) for key, value in weights.items()}
    return GPT.from_state_dict(config, tensors).eval(), weights


def full_logits(module: GPT, ids: Sequence[int]) -> np.ndarray:
    """Uncached logits at the last position of ``ids`` (positions 0..len-1)."""
    with torch.no_grad():
        return module(input_ids=torch.tensor([list(ids)])).logits[0, -1].float().numpy()


def greedy(
    model: LoadedModel, prompts: Mapping[int, Sequence[int]], steps: int
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    """Greedy-decode every row of ``prompts`` together for ``steps`` tokens.

    Returns the chosen tokens per row and, per step, the gap between the top two logits (to
    tell a real divergence from a near-tie). Rows are released at the end.
    """
    rows = list(prompts)
    chosen: dict[int, list[int]] = {row: [] for row in rows}
    gaps: dict[int, list[float]] = {row: [] for row in rows}
    feed = [list(prompts[row]) for row in rows]
    for _ in range(steps):
        logits = model.forward(rows, feed)
        feed = []
        for row, row_logits in zip(rows, logits, strict=True):
            top2 = np.sort(row_logits)[-2:]
            token = int(np.argmax(row_logits))
            chosen[row].append(token)
            gaps[row].append(float(top2[1] - top2[0]))
            feed.append([token])
    model.release(rows)
    return chosen, gaps


def assert_same_or_near_tie(
    expected: list[int], expected_gaps: list[float], got: list[int], label: str
) -> str | None:
    """Greedy tokens must agree; a first divergence is accepted only at a near-tie (top-2 gap
    below ``NEAR_TIE`` in the reference run). Returns a note describing an accepted one."""
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        if a != b:
            gap = expected_gaps[i]
            assert gap < NEAR_TIE, f"{label}: step {i} chose {b}, expected {a} (top-2 gap {gap})"
            return f"{label}: diverged at step {i} on a near-tie (gap {gap:.2e})"
    return None
