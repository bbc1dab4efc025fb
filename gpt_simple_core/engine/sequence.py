"""One record being generated: its tokens, its random stream, and when it stops.

Stopping rules, checked after each new token: EOS (unless ``ignore_eos``) and
``stop_token_ids`` end the record without putting their text in the completion; ``stop``
strings are matched on the decoded text (so across token boundaries) and the completion is cut
before the match; ``max_new_tokens`` ends it with ``length``.
"""

from __future__ import annotations

import numpy as np

from gpt_simple_core.engine.sampler import next_token
from gpt_simple_core.plan.planner import PlannedRecord
from gpt_simple_core.protocol import Tokenizer

FINISH_EOS = "eos"
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class Sequence:
    """The decoding state of one record."""

    def __init__(self, planned: PlannedRecord, prompt_ids: list[int], tokenizer: Tokenizer):
        self.planned = planned
        self.params = planned.params
        self.prompt_ids = prompt_ids
        self.tokenizer = tokenizer
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.completion: str | None = None
        self.rng = None if self.params.greedy else np.random.default_rng(self.params.seed)
        self._seen = set(prompt_ids) if self.params.repetition_penalty != 1.0 else set()
        self._seen_array = np.fromiter(self._seen, dtype=np.int64)
        stops = set(self.params.stop_token_ids)
        if tokenizer.eos_token_id is not None and not self.params.ignore_eos:
            self._eos: int | None = tokenizer.eos_token_id
        else:
            self._eos = None
        self._stop_ids = stops
        self._longest_stop = max((len(s) for s in self.params.stop), default=0)
        self._text_checked = 0  # characters of decoded text already searched for stop strings

    @property
    def index(self) -> int:
        return self.planned.record.index

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def length(self) -> int:
        """Tokens the model has seen or will see for this row (prompt + generated)."""
        return len(self.prompt_ids) + len(self.generated)

    def choose(self, logits: np.ndarray, forbidden: np.ndarray) -> int:
        """Sample the next token from this row's logits (does not record it)."""
        return next_token(logits, self.params, self._seen_array, forbidden, self.rng)

    def add(self, token: int) -> None:
        """Record ``token`` and decide whether the sequence is finished."""
        if token == self._eos:
            self._finish(FINISH_EOS)
            return
        if token in self._stop_ids:
            self._finish(FINISH_STOP)
            return
        self.generated.append(token)
        if self.params.repetition_penalty != 1.0 and token not in self._seen:
            self._seen.add(token)
            self._seen_array = np.append(self._seen_array, token)
        if self._longest_stop and self._check_stop_strings():
            return
        if len(self.generated) >= self.params.max_new_tokens:
            self._finish(FINISH_LENGTH)

    def _check_stop_strings(self) -> bool:
        text = self.tokenizer.decode(self.generated)
        # Back off a little further: a partial UTF-8 character at the end decodes as U+FFFD
        # and may change once its remaining bytes arrive.
        start = max(0, self._text_checked - self._longest_stop - 3)
        hits = [i for s in self.params.stop if (i := text.find(s, start)) >= 0]
        self._text_checked = len(text)
        if not hits:
            return False
        self._finish(FINISH_STOP, text[: min(hits)])
        return True

    def _finish(self, reason: str, text: str | None = None) -> None:
        self.finish_reason = reason
        self.completion = text if text is not None else self.tokenizer.decode(self.generated)

    def text(self) -> str:
        """The completion as output: with the prompt in front when ``return_full_text``."""
        assert self.completion is not None
        if self.params.return_full_text:
            return self.planned.record.prompt + self.completion
        return self.completion
