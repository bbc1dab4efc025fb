"""One record being generated: its tokens, its random stream, and when it stops.

Stopping rules, checked after each new token: EOS (unless ``ignore_eos``) and
``stop_token_ids`` end the record without putting their text in the completion; ``stop``
strings are matched on the decoded text (so across token boundaries) and the completion is cut
before the match; ``max_new_tokens`` ends it with ``length``.
"""

from __future__ import annotations

import numpy as np

from gpt_simple_core.plan.planner import PlannedRecord
from gpt_simple_core.protocol import Tokenizer

FINISH_EOS = "eos"
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class StopStrings:
    """Finds stop strings in a completion as it grows, decoding only its last few tokens.

    Decoding the whole completion at every token costs O(n) per token. Instead the text is
    built incrementally the way streaming detokenizers do it: decode a window that starts one
    step back (so decoders that depend on the previous token, such as ones that join words with
    spaces, see their context) and append what it adds beyond the window's start. A window
    ending in U+FFFD (a character whose bytes are not all there yet) waits for more tokens.
    Only the tail that could hold a new match is searched. A match is confirmed on the full
    decode, which is also where the cut is taken, so the completion is exactly the text the
    full decode gives up to the earliest stop string.
    """

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.longest = max(len(s) for s in stops)
        self.text = ""
        self._prefix = 0  # first token of the decode window
        self._read = 0  # tokens whose text is already in self.text

    def cut(self, ids: list[int]) -> str | None:
        """Feed the completion so far (one token longer than last time); return the text
        before the earliest stop string once one appears, else None."""
        before = self.tokenizer.decode(ids[self._prefix : self._read])
        window = self.tokenizer.decode(ids[self._prefix :])
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return None  # no complete new character yet
        scanned = len(self.text)
        self.text += window[len(before) :]
        self._prefix, self._read = self._read, len(ids)
        start = max(0, scanned - self.longest + 1)
        if not any(self.text.find(s, start) >= 0 for s in self.stops):
            return None
        full = self.tokenizer.decode(ids)
        hits = [i for s in self.stops if (i := full.find(s)) >= 0]
        return full[: min(hits)] if hits else None


class TokenSequence:
    """The decoding state of one record.

    The sampler reads ``params``, ``seen`` (ids the repetition penalty applies to, as an
    array) and ``rng`` (None when greedy) directly, for many rows at once.
    """

    def __init__(self, planned: PlannedRecord, prompt_ids: list[int], tokenizer: Tokenizer):
        self.planned = planned
        self.params = planned.params
        self.prompt_ids = prompt_ids
        self.tokenizer = tokenizer
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.completion: str | None = None
        self.rng = None if self.params.greedy else np.random.default_rng(self.params.seed)
        self._penalised = self.params.repetition_penalty != 1.0
        self._seen = set(prompt_ids) if self._penalised else set()
        self.seen = np.fromiter(self._seen, dtype=np.int64)
        if tokenizer.eos_token_id is not None and not self.params.ignore_eos:
            self._eos: int | None = tokenizer.eos_token_id
        else:
            self._eos = None
        self._stop_ids = set(self.params.stop_token_ids)
        self._stops = StopStrings(tokenizer, self.params.stop) if self.params.stop else None

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

    @property
    def max_length(self) -> int:
        """The most tokens this row can reach (prompt + ``max_new_tokens``)."""
        return len(self.prompt_ids) + self.params.max_new_tokens

    def add(self, token: int) -> None:
        """Record ``token`` and decide whether the sequence is finished."""
        if token == self._eos:
            self._finish(FINISH_EOS)
            return
        if token in self._stop_ids:
            self._finish(FINISH_STOP)
            return
        self.generated.append(token)
        if self._penalised and token not in self._seen:
            self._seen.add(token)
            self.seen = np.append(self.seen, token)
        if self._stops is not None:
            text = self._stops.cut(self.generated)
            if text is not None:
                self._finish(FINISH_STOP, text)
                return
        if len(self.generated) >= self.params.max_new_tokens:
            self._finish(FINISH_LENGTH)

    def _finish(self, reason: str, text: str | None = None) -> None:
        self.finish_reason = reason
        self.completion = text if text is not None else self.tokenizer.decode(self.generated)

    def text(self) -> str:
        """The completion as output: with the prompt in front when ``return_full_text``."""
        assert self.completion is not None
        if self.params.return_full_text:
            return self.planned.record.prompt + self.completion
        return self.completion
