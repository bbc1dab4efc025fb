"""Choosing the next token from logits: one documented order, the same for every backend.

Order (Hugging Face's): forbidden ids masked (pad, padding band) -> repetition penalty (CTRL
rule over prompt + generated tokens) -> greedy argmax (ties to the lowest id) or temperature ->
top-k -> top-p -> min-p -> one draw. The draw is a single uniform number from the record's own
generator, mapped through the cumulative distribution in token-id order, so a record's tokens
depend only on its logits and its seed: not on batch neighbours, batch size or backend.

Work is done in float64 on the candidate set only, so top-p never sorts the whole vocabulary
when top-k is on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt_simple_core.records.schema import GenerationParams


def forbidden_mask(vocab: int, tokenizer_size: int, never: Sequence[int]) -> np.ndarray:
    """Boolean [vocab]: True where a token must never be generated.

    Columns at or above the tokenizer's size are the padding band (the model's vocab is rounded
    up); ``never`` holds ids such as the pad token.
    """
    mask = np.zeros(vocab, dtype=bool)
    mask[min(tokenizer_size, vocab) :] = True
    for token in never:
        if 0 <= token < vocab:
            mask[token] = True
    return mask


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """CTRL rule, in place: a seen token's logit is divided by ``penalty`` if positive, else
    multiplied (so penalty > 1 always makes it less likely)."""
    if penalty == 1.0 or seen.size == 0:
        return
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def candidates(logits: np.ndarray, params: GenerationParams) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (ascending) and their temperature-scaled logits after top-k, top-p and min-p."""
    scaled = logits / params.temperature
    finite = np.isfinite(scaled)
    n_finite = int(finite.sum())
    if n_finite == 0:
        raise ValueError("every token is masked or has a non-finite logit")
    if 0 < params.top_k < n_finite:
        # Keep every token tied with the k-th largest value, as Hugging Face does.
        masked = np.where(finite, scaled, -np.inf)
        kth = np.partition(masked, masked.size - params.top_k)[masked.size - params.top_k]
        ids = np.flatnonzero(masked >= kth)
    else:
        ids = np.flatnonzero(finite)
    values = scaled[ids]
    if params.top_p < 1.0:
        # Descending probability, ties by lowest id; keep a token while the mass strictly
        # before it is below top_p (HF's rule, stated from the top).
        order = np.lexsort((ids, -values))
        probs = _softmax(values[order])
        keep = (np.cumsum(probs) - probs) < params.top_p
        keep[0] = True
        chosen = np.sort(order[keep])
        ids, values = ids[chosen], values[chosen]
    if params.min_p > 0.0:
        probs = _softmax(values)
        keep = probs >= params.min_p * probs.max()
        ids, values = ids[keep], values[keep]
    return ids, values


def draw(ids: np.ndarray, values: np.ndarray, uniform: float) -> int:
    """Inverse-CDF draw in token-id order: the first id whose cumulative probability exceeds
    ``uniform``."""
    cdf = np.cumsum(_softmax(values))
    index = int(np.searchsorted(cdf, uniform * cdf[-1], side="right"))
    return int(ids[min(index, ids.size - 1)])


def next_token(
    logits: np.ndarray,
    params: GenerationParams,
    seen: np.ndarray,
    forbidden: np.ndarray,
    rng: np.random.Generator | None,
) -> int:
    """The next token of one row. ``logits`` is float32 [vocab]; ``rng`` may be None if greedy."""
    row = logits.astype(np.float64)
    if np.isnan(row).any():
        raise ValueError("the model produced NaN logits")
    row[forbidden] = -np.inf
    apply_repetition_penalty(row, seen, params.repetition_penalty)
    if params.greedy:
        if not np.isfinite(row).any():
            raise ValueError("every token is masked or has a non-finite logit")
        return int(np.argmax(row))  # first maximum = lowest id on ties
    assert rng is not None
    ids, values = candidates(row, params)
    return draw(ids, values, float(rng.random()))
