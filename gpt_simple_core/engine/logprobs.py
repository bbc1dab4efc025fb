"""Log-probabilities of tokens, as evaluation asks for them (``generation.logprobs`` and
``generation.prompt_logprobs``, the ``score`` command).

Two distributions, named as vLLM names them:

* ``raw`` (the default): the model's own distribution, ``log_softmax`` of its logits over the
  tokenizer's tokens. The padding band (ids at or above the tokenizer's size, where the
  model's vocabulary was rounded up) holds no token and is left out; nothing else is: no
  temperature, no penalty, no top-k. This is what lm-evaluation-harness scores with.
* ``processed``: the distribution the sampler draws from: forbidden ids masked, repetition
  penalty, then temperature, top-k, top-p and min-p (for greedy records: after the penalty,
  since argmax ignores the temperature). Tokens outside the candidate set have no entry.

Computed in float64 from the float32 logits the backend returns, so two backends that agree
on the logits within float32 rounding agree here within 1e-4.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpt_simple_core.engine.sampler import apply_repetition_penalty, candidates
from gpt_simple_core.protocol import Tokenizer
from gpt_simple_core.records.schema import GenerationParams

RAW = "raw"
PROCESSED = "processed"


def log_softmax(values: np.ndarray) -> np.ndarray:
    """``values - logsumexp(values)`` in float64; ``-inf`` entries stay ``-inf``."""
    values = values.astype(np.float64, copy=False)
    top = values.max()
    return values - (top + np.log(np.exp(values - top).sum()))


def raw_logprobs(logits: np.ndarray, tokenizer_size: int) -> np.ndarray:
    """The ``raw`` distribution of one row's logits ([vocab]), as log-probabilities."""
    return log_softmax(logits[: min(tokenizer_size, logits.shape[-1])])


def processed_logprobs(
    logits: np.ndarray, params: GenerationParams, seen: np.ndarray, forbidden: np.ndarray
) -> np.ndarray:
    """The ``processed`` distribution (see the module); ``-inf`` outside the candidates."""
    row = logits.astype(np.float64)
    row[forbidden] = -np.inf
    apply_repetition_penalty(row, seen, params.repetition_penalty)
    if params.greedy:
        return log_softmax(row)
    ids, values = candidates(row, params)
    out = np.full(row.shape, -np.inf)
    out[ids] = log_softmax(values)
    return out


def entry(token: int, logprobs: np.ndarray, top: int, tokenizer: Tokenizer) -> dict[str, Any]:
    """One token's output entry: ``{"token", "text", "logprob", "top": [...]}``, ``top`` the
    ``top`` most likely tokens, best first (ties: lowest id first), without impossible ones."""
    chosen = float(logprobs[token]) if token < logprobs.shape[-1] else -np.inf
    out: dict[str, Any] = {
        "token": token,
        "text": tokenizer.decode([token]),
        "logprob": chosen if np.isfinite(chosen) else None,
    }
    if top:
        k = min(top, logprobs.shape[-1])
        best = np.argpartition(-logprobs, k - 1)[:k]
        best = best[np.lexsort((best, -logprobs[best]))]  # by logprob, then by id
        out["top"] = [
            {"token": int(i), "text": tokenizer.decode([int(i)]), "logprob": float(logprobs[i])}
            for i in best
            if np.isfinite(logprobs[i])
        ]
    return out
