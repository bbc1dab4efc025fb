"""One record being generated: its tokens, its random stream, and when it stops.

Stopping rules, checked after each new token: EOS (unless ``ignore_eos``) and
``stop_token_ids`` end the record without putting their text in the completion; ``stop``
strings are matched on the decoded text (so across token boundaries) and the completion is cut
before the match; ``max_new_tokens`` ends it with ``length``.

Streaming (``generate --stream``, ``gpt_simple.stream``): a sequence made with ``stream=True``
hands out its text as it is decoded (:meth:`TokenSequence.stream_piece`), with the same
incremental decoding the stop strings use. Only whole characters are handed out, and text that
could be the start of a stop string is held back until it is known not to be one, so what was
shown is always the start of the final completion, and the pieces add up to exactly it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import Tokenizer

FINISH_EOS = "eos"
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class IncrementalText:
    """A completion's text built as it grows, decoding only its last few tokens.

    Decoding the whole completion at every token costs O(n) per token. Instead the text is
    built the way streaming detokenizers do it: decode a window that starts one step back (so
    decoders that depend on the previous token, such as ones that join words with spaces, see
    their context) and append what it adds beyond the window's start. A window ending in
    U+FFFD (a character whose bytes are not all there yet) waits for more tokens, so
    :attr:`text` only ever holds whole characters.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.text = ""
        self._prefix = 0  # first token of the decode window
        self._read = 0  # tokens whose text is already in self.text

    def feed(self, ids: list[int]) -> bool:
        """Feed the completion so far (one token longer than last time); whether
        :attr:`text` grew (False: no complete new character yet)."""
        before = self.tokenizer.decode(ids[self._prefix : self._read])
        window = self.tokenizer.decode(ids[self._prefix :])
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return False
        self.text += window[len(before) :]
        self._prefix, self._read = self._read, len(ids)
        return True


class StopStrings:
    """Finds stop strings in a completion as it grows (its text from :class:`IncrementalText`).

    Only the tail that could hold a new match is searched. A match is confirmed on the full
    decode, which is also where the cut is taken, so the completion is exactly the text the
    full decode gives up to the earliest stop string.
    """

    def __init__(
        self, tokenizer: Tokenizer, stops: tuple[str, ...], text: IncrementalText | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.longest = max(len(s) for s in stops)
        self.incremental = text or IncrementalText(tokenizer)

    @property
    def text(self) -> str:
        return self.incremental.text

    def cut(self, ids: list[int]) -> str | None:
        """Feed the completion so far (one token longer than last time); return the text
        before the earliest stop string once one appears, else None."""
        scanned = len(self.incremental.text)
        if not self.incremental.feed(ids):
            return None  # no complete new character yet
        start = max(0, scanned - self.longest + 1)
        if not any(self.text.find(s, start) >= 0 for s in self.stops):
            return None
        full = self.tokenizer.decode(ids)
        hits = [i for s in self.stops if (i := full.find(s)) >= 0]
        return full[: min(hits)] if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string: the
    length of its longest ending that begins some stop string (0 when none does).

    A stream must not show them yet: if the stop string completes, they are not part of the
    completion, and what was printed cannot be taken back.
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TokenSequence:
    """The decoding state of one record.

    The sampler reads ``params``, ``seen`` (ids the repetition penalty applies to, as an
    array) and ``rng`` (None when greedy) directly, for many rows at once. With ``stream``,
    :meth:`stream_piece` hands out the text decoded since its last call (see the module's
    docstring); without it, nothing is decoded before the sequence ends unless stop strings
    need it (a plain run pays nothing for streaming).
    """

    def __init__(
        self,
        planned: PlannedRecord,
        prompt_ids: list[int],
        tokenizer: Tokenizer,
        *,
        stream: bool = False,
    ):
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
        #: the last token sampled (EOS and stop ids included, though they are not generated)
        self.last_token: int | None = None
        self._text = IncrementalText(tokenizer) if stream else None
        self._stops = (
            StopStrings(tokenizer, self.params.stop, self._text) if self.params.stop else None
        )
        self._shown = 0  # characters of the streamed text handed out so far
        #: one entry per sampled token when ``logprobs`` is asked (:mod:`..logprobs`)
        self.token_logprobs: list[dict] | None = [] if self.params.logprobs is not None else None
        #: filled at prefill when ``prompt_logprobs`` is asked
        self.prompt_logprobs: list[dict | None] | None = None
        self._stream_prefix = planned.record.prompt if self.params.return_full_text else ""

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
        self.last_token = token
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
        elif self._text is not None:
            self._text.feed(self.generated)
        if len(self.generated) >= self.params.max_new_tokens:
            self._finish(FINISH_LENGTH)

    def _finish(self, reason: str, text: str | None = None) -> None:
        self.finish_reason = reason
        self.completion = text if text is not None else self.tokenizer.decode(self.generated)

    @property
    def needs_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None and self.prompt_logprobs is None

    def logprob_fields(self) -> dict[str, list]:
        """The output keys the record asked for: ``logprobs``, ``prompt_logprobs``."""
        fields: dict[str, list] = {}
        if self.token_logprobs is not None:
            fields["logprobs"] = self.token_logprobs
        if self.prompt_logprobs is not None:
            fields["prompt_logprobs"] = self.prompt_logprobs
        return fields

    def text(self) -> str:
        """The completion as output: with the prompt in front when ``return_full_text``."""
        assert self.completion is not None
        if self.params.return_full_text:
            return self.planned.record.prompt + self.completion
        return self.completion

    def stream_piece(self) -> str:
        """The text to show since the last call (call it after each :meth:`add`; the
        sequence must have been made with ``stream=True``).

        While decoding: the new whole characters, less any ending that could be the start of
        a stop string. Once finished: the rest of :meth:`text`, so the pieces add up to
        exactly what the output record says (prompt first with ``return_full_text``).
        """
        assert self._text is not None, "TokenSequence(stream=True) streams"
        start = self._shown
        if self.done:
            final = self.text()
            self._shown = max(start, len(final))
            return final[start:]
        # Slices of the prefix and the text, never their whole concatenation: O(piece) a token.
        prefix, text = self._stream_prefix, self._text.text
        end = len(prefix) + len(text) - held_back(text, self.params.stop)
        if end <= start:
            return ""
        self._shown = end
        return prefix[start:] + text[max(0, start - len(prefix)) : end - len(prefix)]


#: Called after each token a streamed sequence samples, with the text it adds (maybe "").
OnToken = Callable[[TokenSequence, str], None]


class TokenSink(Protocol):
    """A sink (:class:`~gpt_simple_core.output.sinks.Sink`) that also wants each token as it
    is decoded: the engine streams every sequence to a sink that has ``on_token``."""

    def put(self, index: int, record: dict) -> None: ...

    def on_token(self, seq: TokenSequence, piece: str) -> None: ...
