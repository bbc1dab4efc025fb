"""Scoring text with a model: what lm-evaluation-harness calls ``loglikelihood`` and
``loglikelihood_rolling``, with its tokenization and windowing rules, so our numbers are the
numbers an lm-eval user expects.

* ``loglikelihood`` of ``continuation`` given ``context``: spaces that end the context move to
  the continuation's front; the continuation's tokens are those of ``context + continuation``
  after the context's own tokens (so a merge across the boundary goes to the continuation);
  an empty context is the EOS token. Sum of the continuation tokens' log-probabilities, from
  the raw distribution (:mod:`.logprobs`), and whether each was the argmax (``is_greedy``).
  A context longer than the model's context loses its oldest tokens.
* ``loglikelihood_rolling`` of ``text``: the tokens are split into disjoint windows of the
  model's context length (``get_rolling_token_windows`` with ``context_len=1``): the first
  window is preceded by the EOS token, each later one by the tokens just before it, and every
  token of the text is predicted exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from gpt_simple_core.engine.logprobs import raw_logprobs
from gpt_simple_core.errors import GenerationError
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import LoadedModel, Tokenizer
from gpt_simple_core.records.parse import ROLLING

#: Tokens of one forward call when a backend allows chunked prefill.
CHUNK_TOKENS = 4096
ROW = 0  # scoring runs one row at a time, always in this slot


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list, list]:
    """lm-eval's ``_encode_pair``: (context ids, continuation ids)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context) if context else []
    return context_ids, whole[len(context_ids) :]


def rolling_windows(
    ids: list[int], prefix: int, length: int
) -> Iterator[tuple[list[int], list[int]]]:
    """lm-eval's rolling windows (``context_len=1``), made disjoint: (context, predicted)."""
    predicted = 0
    first = min(length, len(ids))
    yield [prefix], ids[:first]
    predicted = first
    while predicted < len(ids):
        size = min(len(ids) - predicted, length)
        end = predicted + size
        window = ids[max(0, end - length - 1) : end - 1]
        yield window[: len(window) - (size - 1)], ids[end - size : end]
        predicted += size


class Scorer:
    """Scores records with ``model``, one at a time, each in a fresh row."""

    def __init__(
        self,
        model: LoadedModel,
        on_done: Callable[[PlannedRecord, dict[str, Any]], None],
        on_error: Callable[[PlannedRecord, BaseException], None],
        before_step: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.on_done = on_done
        self.on_error = on_error
        self.before_step = before_step

    def run(self, records: Iterable[PlannedRecord]) -> None:
        for planned in records:
            if self.before_step is not None:
                self.before_step()  # may raise to stop the run between two records
            try:
                score = self.score(planned)
            except Exception as exc:
                self.on_error(planned, exc)
                continue
            finally:
                self.model.release([ROW])
            self.on_done(planned, score)

    def score(self, planned: PlannedRecord) -> dict[str, Any]:
        record, tokenizer = planned.record, self.model.tokenizer
        eos = tokenizer.eos_token_id
        if record.task == ROLLING:
            if eos is None:
                raise GenerationError("a rolling score needs an EOS token to start the text")
            ids = tokenizer.encode(record.prompt)
            if not ids:
                raise GenerationError("the text produced no tokens")
            length = self.model.context_length or len(ids)
            total, windows = 0.0, 0
            for context, predicted in rolling_windows(ids, eos, length):
                logprob, _ = self.loglikelihood(context, predicted)
                total, windows = total + logprob, windows + 1
            return {"logprob": total, "tokens": len(ids), "windows": windows}
        assert record.continuation is not None
        context, continuation = encode_pair(tokenizer, record.prompt, record.continuation)
        if not context:
            if eos is None:
                raise GenerationError("an empty context needs an EOS token to start from")
            context = [eos]
        if not continuation:
            raise GenerationError("the continuation produced no tokens")
        logprob, greedy = self.loglikelihood(context, continuation)
        return {"logprob": logprob, "is_greedy": greedy, "tokens": len(continuation)}

    def loglikelihood(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of the log-probabilities of ``continuation`` after ``context``, and whether
        each token was the model's most likely one."""
        limit = self.model.context_length
        if limit is not None and len(continuation) > limit:
            raise GenerationError(
                f"the continuation has {len(continuation)} tokens, more than the model's "
                f"context of {limit}"
            )
        whole = context + continuation
        fed = whole[:-1]
        if limit is not None and len(fed) > limit:
            fed = fed[-limit:]  # the oldest context tokens drop out, as lm-eval does
        logits = self._logits(fed)
        first = len(fed) - len(continuation) + 1  # logits[first - 1] predicts continuation[0]
        size = len(self.model.tokenizer)
        total, greedy = 0.0, True
        for offset, token in enumerate(continuation):
            row = raw_logprobs(logits[first - 1 + offset], size)
            total += float(row[token])
            greedy = greedy and int(np.argmax(row)) == token
        return total, greedy

    def _logits(self, fed: list[int]) -> np.ndarray:
        """The logits after every token of ``fed``, [len(fed), vocab], in a fresh row."""
        self.model.release([ROW])
        chunk = CHUNK_TOKENS if self.model.prefill_in_chunks else max(len(fed), 1)
        parts = [
            self.model.forward_all([ROW], [fed[start : start + chunk]])[0]
            for start in range(0, len(fed), chunk)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
