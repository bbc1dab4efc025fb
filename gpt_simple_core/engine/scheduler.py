"""The decode loop of one group (one loaded model): continuous batching over a fixed set of slots.

Records are admitted in input order into free slots; each admission is prefilled (in chunks
when the prompt is longer than the per-call token budget), then every active row advances one
token per step. A finished row releases its slot at once and the next waiting record takes it,
so no row waits for the longest one in its batch. A failure inside a batched forward call is
isolated by replaying each row of that call alone: only the row that fails on its own gets an
``error``.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from gpt_simple_core.engine.sampler import forbidden_mask
from gpt_simple_core.engine.sequence import Sequence
from gpt_simple_core.errors import GenerationError
from gpt_simple_core.plan.planner import PlannedRecord
from gpt_simple_core.protocol import LoadedModel

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_TOKENS = 4096

OnDone = Callable[[Sequence], None]
OnError = Callable[[PlannedRecord, BaseException], None]


class GroupScheduler:
    """Runs records through one :class:`LoadedModel`, reporting each as it finishes."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        on_done: OnDone,
        on_error: OnError,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        on_tokens: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        self.max_batch_tokens = max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS
        self.on_done = on_done
        self.on_error = on_error
        self.on_tokens = on_tokens or (lambda n: None)
        self._forbidden: np.ndarray | None = None
        self.active: dict[int, Sequence] = {}
        self._free: list[int] = []

    # The loop ------------------------------------------------------------------------------
    def run(self, records: Iterable[PlannedRecord]) -> None:
        waiting = deque(records)
        self._free = list(range(self.batch_size - 1, -1, -1))
        self.active = {}
        while waiting or self.active:
            admitted = self._admit(waiting)
            if admitted:
                self._step({slot: self.active[slot].prompt_ids for slot in admitted})
            if self.active:
                self._step({slot: seq.generated[-1:] for slot, seq in self.active.items()})

    def _admit(self, waiting: deque[PlannedRecord]) -> list[int]:
        admitted = []
        while waiting and self._free:
            planned = waiting.popleft()
            try:
                prompt_ids = self.model.tokenizer.encode(planned.record.prompt)
                if not prompt_ids:
                    raise GenerationError("prompt produced no tokens")
            except Exception as exc:
                self.on_error(planned, exc)
                continue
            slot = self._free.pop()
            self.active[slot] = Sequence(planned, prompt_ids, self.model.tokenizer)
            admitted.append(slot)
        return admitted

    def _step(self, feed: dict[int, list[int]]) -> None:
        """Feed tokens to rows, then sample one token for each row that survived."""
        logits = self._forward(feed)
        forbidden = self._forbidden_for(logits)
        produced = 0
        for slot, row_logits in logits.items():
            seq = self.active[slot]
            try:
                seq.add(seq.choose(row_logits, forbidden))
            except Exception as exc:
                self._fail(slot, exc)
                continue
            produced += 1
            if seq.done:
                self._retire(slot)
                self.on_done(seq)
        self.on_tokens(produced)

    # Forward calls -------------------------------------------------------------------------
    def _forward(self, feed: dict[int, list[int]]) -> dict[int, np.ndarray]:
        """Logits for every row of ``feed`` that did not fail, packed under the token budget."""
        out: dict[int, np.ndarray] = {}
        call: list[int] = []
        budget = 0
        for slot, tokens in feed.items():
            if len(tokens) > self.max_batch_tokens:
                self._call_alone(slot, tokens, out)
                continue
            if call and budget + len(tokens) > self.max_batch_tokens:
                self._call(call, feed, out)
                call, budget = [], 0
            call.append(slot)
            budget += len(tokens)
        if call:
            self._call(call, feed, out)
        return out

    def _call(self, slots: list[int], feed: dict[int, list[int]], out: dict) -> None:
        try:
            logits = self.model.forward(slots, [feed[s] for s in slots])
        except Exception as exc:
            if len(slots) == 1:
                self._fail(slots[0], exc)
                return
            # Someone in this call broke it: replay each row alone from its full history.
            self.model.release(slots)
            for slot in slots:
                seq = self.active[slot]
                self._call_alone(slot, seq.prompt_ids + seq.generated, out)
            return
        for slot, row in zip(slots, logits, strict=True):
            out[slot] = row

    def _call_alone(self, slot: int, tokens: list[int], out: dict) -> None:
        """Feed one row, in chunks of at most the token budget; keep the last logits."""
        chunk_size = self.max_batch_tokens if self.model.prefill_in_chunks else max(len(tokens), 1)
        try:
            for start in range(0, len(tokens), chunk_size):
                chunk = tokens[start : start + chunk_size]
                logits = self.model.forward([slot], [chunk])
        except Exception as exc:
            self._fail(slot, exc)
            return
        out[slot] = logits[0]

    # Bookkeeping ---------------------------------------------------------------------------
    def _forbidden_for(self, logits: dict[int, np.ndarray]) -> np.ndarray:
        if self._forbidden is None and logits:
            vocab = next(iter(logits.values())).shape[-1]
            tokenizer = self.model.tokenizer
            self._forbidden = forbidden_mask(vocab, len(tokenizer), tokenizer.never_generate)
        assert self._forbidden is not None or not logits
        return self._forbidden  # type: ignore[return-value]

    def _retire(self, slot: int) -> None:
        del self.active[slot]
        self.model.release([slot])
        self._free.append(slot)

    def _fail(self, slot: int, exc: BaseException) -> None:
        seq = self.active[slot]
        with contextlib.suppress(
            Exception
        ):  # the row is failing already; a release error adds nothing
            self._retire(slot)
        self.on_error(seq.planned, exc)
