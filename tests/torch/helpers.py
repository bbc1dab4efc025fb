"""Building torch models from the numpy checkpoint builders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_torch.model import GPT
from tests.support.checkpoints import PEAKED_SCALE as WEIGHT_SCALE
from tests.support.checkpoints import random_state_dict


def build_gpt(config: ModelConfig, seed: int = 0) -> tuple[GPT, dict[str, np.ndarray]]:
    """A fp32 CPU :class:`GPT` with seeded random weights, and those weights."""
    weights = random_state_dict(config, seed=seed, scale=WEIGHT_SCALE)
    tensors = {key: torch.from_numpy(value) for key, value in weights.items()}
    return GPT.from_state_dict(config, tensors).eval(), weights


def full_logits(module: GPT, ids: Sequence[int]) -> np.ndarray:
    """Uncached logits at the last position of ``ids`` (positions 0..len-1)."""
    with torch.no_grad():
        return module(input_ids=torch.tensor([list(ids)])).logits[0, -1].float().numpy()
