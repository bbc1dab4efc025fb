"""Choosing the next token from logits: one documented order, the same for every backend.

Order (Hugging Face's): forbidden ids masked (pad, padding band) -> repetition penalty (CTRL
rule over prompt + generated tokens) -> greedy argmax (ties to the lowest id) or temperature ->
top-k -> top-p -> min-p -> one draw. The draw is a single uniform number from the record's own
generator, mapped through the cumulative distribution in token-id order, so a record's tokens
depend only on its logits and its seed: not on batch neighbours, batch size or backend.

Two entry points compute the same thing: :func:`next_token` for one row (the reference) and
:func:`next_tokens` for a batch, which does the passes over the whole vocabulary (NaN check,
masking, greedy argmax, the top-k threshold) once for all rows in float32 and leaves only the
small candidate set of each row to float64. Rows it cannot prove identical for (a repetition
penalty, no top-k, infinite logits, extreme temperatures) go through :func:`next_token`.

Top-p never sorts the whole vocabulary: it sorts a head of the most likely tokens, grown until
it holds ``top_p`` of the mass (:func:`nucleus`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt_simple_core.records.schema import GenerationParams

#: Tokens sorted first when top-p runs over a large candidate set; grown 8x while too few.
TOP_P_HEAD = 64
#: Temperatures for which float32 order equals the order of float64 ``logit / temperature``
#: (no overflow to inf, no underflow to a tie): the batched path's precondition.
FAST_TEMPERATURES = (1e-200, 1e200)


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
    return nucleus(ids, scaled[ids], params)


def nucleus(
    ids: np.ndarray, values: np.ndarray, params: GenerationParams
) -> tuple[np.ndarray, np.ndarray]:
    """Top-p then min-p over candidates (``ids`` ascending, ``values`` float64 scaled logits)."""
    if params.top_p < 1.0:
        ids, values = _top_p(ids, values, params.top_p)
    if params.min_p > 0.0:
        probs = _softmax(values)
        keep = probs >= params.min_p * probs.max()
        ids, values = ids[keep], values[keep]
    return ids, values


def _top_p(ids: np.ndarray, values: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep tokens, most likely first (ties: lowest id first), while the mass before is below
    ``top_p`` (HF's rule, stated from the top); the first is always kept.

    Probabilities are the softmax over every candidate, in id order. Only a head of the most
    likely tokens is sorted: everything outside the head comes after it in the order, so once
    the head's mass reaches ``top_p`` nothing outside can be kept, and the result is exactly
    that of sorting everything (the cumulative sum only grows).
    """
    probs = _softmax(values)
    n = values.size
    size = min(n, TOP_P_HEAD)
    while True:
        if size < n:
            kth = np.partition(values, n - size)[n - size]
            head = np.flatnonzero(values >= kth)  # with every token tied with the cut
        else:
            head = np.arange(n)
        order = head[_descending(values[head])]
        mass = np.cumsum(probs[order])
        if head.size == n or mass[-1] >= top_p:
            break
        size *= 8
    before = np.concatenate(([0.0], mass[:-1]))
    keep = before < top_p
    keep[0] = True
    chosen = np.sort(order[keep])
    return ids[chosen], values[chosen]


def _descending(values: np.ndarray) -> np.ndarray:
    """Indices sorting ``values`` descending, ties in index order (a stable sort, paid for
    only when there are ties: an unstable one is several times faster on large arrays)."""
    negated = -values
    order = np.argsort(negated)
    ranked = negated[order]
    if (ranked[1:] == ranked[:-1]).any():
        order = np.argsort(negated, kind="stable")
    return order


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


def next_tokens(
    logits: np.ndarray,
    params: Sequence[GenerationParams],
    seen: Sequence[np.ndarray],
    forbidden: np.ndarray,
    rngs: Sequence[np.random.Generator | None],
) -> list[int | ValueError]:
    """:func:`next_token` for every row of ``logits`` (float32 [rows, vocab], overwritten).

    Returns each row's token, or the ``ValueError`` :func:`next_token` would raise for it, so
    one bad row does not stop the others. Each row draws from its own generator, exactly as
    :func:`next_token` would: results are identical, row by row.
    """
    results: list[int | ValueError] = []
    # NaN propagates through max: one pass finds NaN rows and rows holding +inf.
    tops = logits.max(axis=1).tolist()
    logits[:, np.flatnonzero(forbidden)] = -np.inf
    greedy = [
        row
        for row, (p, top) in enumerate(zip(params, tops, strict=True))
        if p.greedy and p.repetition_penalty == 1.0 and top < np.inf
    ]
    # Greedy rows without a penalty: one argmax over all of them (the lowest id wins ties).
    block = logits if len(greedy) == len(params) else logits[greedy]
    choices = dict(zip(greedy, block.argmax(axis=1).tolist(), strict=True)) if greedy else {}
    for row, (p, top) in enumerate(zip(params, tops, strict=True)):
        token: int | None = None
        if top != top:  # NaN
            results.append(ValueError("the model produced NaN logits"))
            continue
        if row in choices:
            token = choices[row]
            if logits[row, token] == -np.inf:
                token = None  # everything masked: next_token raises the right error
        elif _fast_sampling(p, top):
            token = _sample_fast(logits[row], p, rngs[row])
        if token is None:
            try:
                token = next_token(logits[row], p, seen[row], forbidden, rngs[row])
            except ValueError as exc:
                results.append(exc)
                continue
        results.append(token)
    return results


def _fast_sampling(p: GenerationParams, top: float) -> bool:
    """Whether :func:`_sample_fast` computes exactly what :func:`next_token` would."""
    return (
        not p.greedy
        and p.repetition_penalty == 1.0
        and p.top_k > 0
        and top < np.inf
        and FAST_TEMPERATURES[0] <= p.temperature <= FAST_TEMPERATURES[1]
    )


def _sample_fast(
    row: np.ndarray, p: GenerationParams, rng: np.random.Generator | None
) -> int | None:
    """Top-k sampling on a masked float32 row, without a float64 copy of the vocabulary;
    ``None`` when fewer logits are finite than ``top_k`` (left to :func:`next_token`).

    Dividing by a temperature in :data:`FAST_TEMPERATURES` keeps float32 order and ties, so
    the k-th largest raw logit selects exactly the ids :func:`candidates` selects; only those
    are converted to float64 and scaled, with the same arithmetic.
    """
    k = min(p.top_k, row.size)
    kth = np.partition(row, row.size - k)[row.size - k]
    if kth == -np.inf:
        return None
    ids = np.flatnonzero(row >= kth)
    ids, values = nucleus(ids, row[ids].astype(np.float64) / p.temperature, p)
    assert rng is not None
    return draw(ids, values, float(rng.random()))
