"""The decode loop of one group (one loaded model): continuous batching over a fixed set of slots.

Records wait in a bounded admission window, taken in input order and tokenized as they enter
it. When slots are free, the oldest waiting record is always admitted (nothing starves) and
the other free slots go to the records of the window whose prompt lengths are closest to its
(length bucketing: a batched prefill call pads every row to its longest, so similar lengths
waste little). Each admission is prefilled (in chunks when a prompt is longer than the tokens
allowed per call), then every active row advances one token per step. A finished row releases
its slot at once and the window refills it, so no row waits for the longest one in its batch.
Output order is restored by the writer; per-record seeds make every completion independent of
which rows shared a step.

The number of slots and the tokens per call come from the model's memory budget
(:mod:`gpt_simple_core.engine.capacity`) unless set. A failure inside a batched forward call is
isolated by replaying each row of that call alone: only the row that fails on its own gets an
``error``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import structlog

from gpt_simple_core.engine.capacity import (
    DEFAULT_MAX_SLOTS,
    Capacity,
    model_budget,
    plan_capacity,
    reachable_length,
    reserve_length,
    row_limit,
    too_long,
)
from gpt_simple_core.engine.logprobs import PROCESSED, entry, processed_logprobs, raw_logprobs
from gpt_simple_core.engine.sampler import forbidden_mask, next_tokens
from gpt_simple_core.engine.token_sequence import OnToken, TokenSequence
from gpt_simple_core.errors import GenerationError
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import OVERFLOW_TRUNCATE, LoadedModel

log = structlog.get_logger(__name__)

#: The admission window holds this many times the number of slots.
WINDOW_FACTOR = 4

OnDone = Callable[[TokenSequence], None]
OnError = Callable[[PlannedRecord, BaseException], None]
Waiting = tuple[PlannedRecord, list[int]]  # a record and its prompt's token ids
Logits = tuple[list[int], np.ndarray]  # rows and their logits [len(rows), vocab]


class GroupScheduler:
    """Runs records through one :class:`LoadedModel`, reporting each as it finishes.

    ``batch_size`` and ``max_batch_tokens`` override the slots and tokens per call the memory
    budget implies. ``bucketing=False`` admits strictly in input order (same completions,
    more padding). ``before_step`` runs before every step; raising there stops the loop with
    the rows in flight unreported. ``on_token`` (streaming) is called after every token a row
    samples, with the text it adds (:meth:`TokenSequence.stream_piece`), before ``on_done``.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        on_done: OnDone,
        on_error: OnError,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        on_tokens: Callable[[int], None] | None = None,
        bucketing: bool = True,
        before_step: Callable[[], None] | None = None,
        on_token: OnToken | None = None,
    ) -> None:
        self.model = model
        self.on_token = on_token
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.bucketing = bucketing
        self.on_done = on_done
        self.on_error = on_error
        self.on_tokens = on_tokens or (lambda n: None)
        self.before_step = before_step or (lambda: None)
        self.capacity: Capacity | None = None
        self._forbidden: np.ndarray | None = None
        self.active: dict[int, TokenSequence] = {}
        self._free: list[int] = []
        self._window: list[Waiting] = []
        self._window_size = 0
        self._row_limit: int | None = None  # the longest row that fits the memory budget

    @property
    def call_tokens(self) -> int:
        assert self.capacity is not None
        return self.capacity.call_tokens

    # The loop ------------------------------------------------------------------------------
    def run(self, records: Iterable[PlannedRecord]) -> None:
        records = list(records)
        pending = iter(records)
        budget = model_budget(self.model)
        self._row_limit = row_limit(self.model, budget)
        # Fill a first window as large as the largest batch could need, then size the batch
        # from the longest row it holds (records that cannot fit at all fail as they enter it).
        cap = self.batch_size or self.model.max_batch_size or DEFAULT_MAX_SLOTS
        self._window, self._window_size = [], WINDOW_FACTOR * cap
        self._fill(pending)
        if not self._window:
            return
        longest_prompt = max(len(ids) for _, ids in self._window)
        longest_row = reachable_length(self.model, longest_prompt, self._longest_new(records))
        if self._row_limit is not None:
            longest_row = min(longest_row, self._row_limit)
        self.capacity = plan_capacity(
            self.model,
            longest_row=longest_row,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            records=len(records),
            budget=budget,
        )
        slots = self.capacity.slots
        reserved = reserve_length(self.model, longest_row, longest_prompt)
        log.info(
            "batching",
            slots=slots,
            tokens_per_call=self.capacity.call_tokens,
            reserved_tokens_per_row=reserved,  # the cache grows past it for rows that need it
            why=self.capacity.reason,
        )
        self.model.reserve(slots, reserved)
        self._window_size = WINDOW_FACTOR * slots
        self._free = list(range(slots - 1, -1, -1))
        self.active = {}
        while self._window or self.active:
            self.before_step()  # may raise to stop the run between two steps
            admitted = self._admit(pending)
            if admitted:
                self._step({slot: self._prefill(self.active[slot].prompt_ids) for slot in admitted})
            if self.active:
                self._step({slot: seq.generated[-1:] for slot, seq in self.active.items()})

    def _longest_new(self, records: list[PlannedRecord]) -> int:
        """The largest ``max_new_tokens`` among records that can fit at all (the others fail
        as they enter the window, and must not shrink every batch to one row)."""
        limit = self._row_limit
        if limit is None:
            return max(r.max_new_tokens for r in records)
        fitting = [
            r.max_new_tokens
            for r in records
            if reachable_length(self.model, 1, r.max_new_tokens) <= limit
        ]
        return max(fitting, default=1)

    def _fill(self, pending: Iterator[PlannedRecord]) -> None:
        """Top the window up from ``pending``, tokenizing as records enter it; a record that
        cannot fit in memory fails here, before anything is allocated for it (checked once
        before tokenizing, with the plan's lower bound of its prompt, then with its real
        length: a 50 MB prompt that cannot fit is not tokenized at all)."""
        while len(self._window) < self._window_size:
            planned = next(pending, None)
            if planned is None:
                return
            try:
                self._check_fits(planned, planned.min_prompt_tokens)
                prompt_ids = self.model.tokenizer.encode(planned.record.prompt)
                if not prompt_ids:
                    raise GenerationError("prompt produced no tokens")
                self._check_fits(planned, len(prompt_ids))
            except Exception as exc:
                self.on_error(planned, exc)
                continue
            self._window.append((planned, prompt_ids))

    def _check_fits(self, planned: PlannedRecord, prompt_tokens: int) -> None:
        why = too_long(self.model, prompt_tokens, planned.max_new_tokens, self._row_limit)
        if why is not None:
            raise GenerationError(why)

    def _prefill(self, ids: list[int]) -> list[int]:
        """What a row's prefill feeds: its tokens, or under ``truncate`` only the last
        ``context_length`` of them (the policy recomputes over exactly those, so feeding the
        rest of a 50 MB prompt would only be recomputed away, chunk after chunk)."""
        context = self.model.context_length
        if self.model.context_overflow == OVERFLOW_TRUNCATE and context and len(ids) > context:
            return ids[-context:]
        return ids

    def _admit(self, pending: Iterator[PlannedRecord]) -> list[int]:
        chosen = choose_admissions(
            [len(ids) for _, ids in self._window], len(self._free), bucketing=self.bucketing
        )
        admitted = []
        for position in chosen:
            planned, prompt_ids = self._window[position]
            slot = self._free.pop()
            self.active[slot] = TokenSequence(
                planned, prompt_ids, self.model.tokenizer, stream=self.on_token is not None
            )
            admitted.append(slot)
        for position in reversed(chosen):
            del self._window[position]
        if chosen:
            self._fill(pending)
        return admitted

    def _step(self, feed: dict[int, list[int]]) -> None:
        """Feed tokens to rows, then sample one token for each row that survived."""
        slots, logits = self._forward(feed)
        if not slots:
            return
        seqs = [self.active[slot] for slot in slots]
        # raw rows of the records asking for logprobs, before the sampler masks them in place
        asking = {
            i: logits[i].copy() for i, seq in enumerate(seqs) if seq.params.logprobs is not None
        }
        tokens = next_tokens(
            logits,
            [seq.params for seq in seqs],
            [seq.seen for seq in seqs],
            self._forbidden_for(logits.shape[-1]),
            [seq.rng for seq in seqs],
        )
        produced = 0
        for i, (slot, seq, token) in enumerate(zip(slots, seqs, tokens, strict=True)):
            try:
                if isinstance(token, Exception):
                    raise token
                if i in asking:
                    seq.token_logprobs.append(self._logprob_entry(seq, asking[i], token))
                seq.add(token)
            except Exception as exc:
                self._fail(slot, exc)
                continue
            produced += 1
            if self.on_token is not None:
                self.on_token(seq, seq.stream_piece())
            if seq.done:
                self._retire(slot)
                self.on_done(seq)
        self.on_tokens(produced)

    # Forward calls -------------------------------------------------------------------------
    def _forward(self, feed: dict[int, list[int]]) -> Logits:
        """Logits of every row of ``feed`` that did not fail, packed under the token budget;
        the samples of one record prefill once and copy the state (where the model can)."""
        copies = self._shared_prefills(feed)
        feed = {slot: tokens for slot, tokens in feed.items() if slot not in copies}
        slots, logits = self._forward_packed(feed)
        if not copies:
            return slots, logits
        position = {slot: i for i, slot in enumerate(slots)}
        copied = [(slot, source) for slot, source in copies.items() if source in position]
        for slot, source in copies.items():
            if source not in position:  # the prefill failed: these samples fail with it
                self._fail(slot, GenerationError("the prefill of this record's prompt failed"))
        for slot, source in copied:
            self.model.copy_row(source, [slot])
        rows = [position[source] for _, source in copied]
        return slots + [slot for slot, _ in copied], np.concatenate([logits, logits[rows]])

    def _shared_prefills(self, feed: dict[int, list[int]]) -> dict[int, int]:
        """Rows of ``feed`` that are another sample of a record being prefilled in the same
        step, each mapped to the row that prefills for it (none if the model cannot copy)."""
        if not self.model.copies_rows:
            return {}
        first: dict[int, int] = {}
        copies: dict[int, int] = {}
        for slot, tokens in feed.items():
            seq = self.active[slot]
            if seq.generated or seq.needs_prompt_logprobs or len(tokens) != len(seq.prompt_ids):
                continue  # not a whole-prompt prefill
            if seq.index in first:
                copies[slot] = first[seq.index]
            else:
                first[seq.index] = slot
        return copies

    def _forward_packed(self, feed: dict[int, list[int]]) -> Logits:
        """Logits of every row of ``feed`` that did not fail, packed under the token budget."""
        parts: list[Logits] = []
        call: list[int] = []
        budget = 0
        for slot, tokens in feed.items():
            if self.active[slot].needs_prompt_logprobs:
                self._call_all(slot, tokens, parts)
                continue
            if len(tokens) > self.call_tokens:
                self._call_alone(slot, tokens, parts)
                continue
            if call and budget + len(tokens) > self.call_tokens:
                self._call(call, feed, parts)
                call, budget = [], 0
            call.append(slot)
            budget += len(tokens)
        if call:
            self._call(call, feed, parts)
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return [], np.empty((0, 0), dtype=np.float32)
        return [s for rows, _ in parts for s in rows], np.concatenate([lg for _, lg in parts])

    def _call(self, slots: list[int], feed: dict[int, list[int]], parts: list[Logits]) -> None:
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
                self._call_alone(slot, self._prefill(seq.prompt_ids + seq.generated), parts)
            return
        parts.append((slots, _owned_float32(logits)))

    def _call_alone(self, slot: int, tokens: list[int], parts: list[Logits]) -> None:
        """Feed one row, in chunks of at most the token budget; keep the last logits."""
        chunk_size = self.call_tokens if self.model.prefill_in_chunks else max(len(tokens), 1)
        try:
            for start in range(0, len(tokens), chunk_size):
                chunk = tokens[start : start + chunk_size]
                logits = self.model.forward([slot], [chunk])
        except Exception as exc:
            self._fail(slot, exc)
            return
        parts.append(([slot], _owned_float32(logits)))

    def _call_all(self, slot: int, tokens: list[int], parts: list[Logits]) -> None:
        """Prefill a row that asked for ``prompt_logprobs``: the logits after every token
        (:meth:`LoadedModel.forward_all`, in chunks), each turned into the next prompt token's
        entry as it comes (a long prompt's [tokens, vocab] logits are never held at once)."""
        seq = self.active[slot]
        top, tokenizer = seq.params.prompt_logprobs or 0, self.model.tokenizer
        skipped = len(seq.prompt_ids) - len(tokens)  # cut to the context by truncate
        entries: list[dict | None] = [None] * (skipped + 1)
        chunk_size = self.call_tokens if self.model.prefill_in_chunks else max(len(tokens), 1)
        try:
            for start in range(0, len(tokens), chunk_size):
                chunk = tokens[start : start + chunk_size]
                (logits,) = self.model.forward_all([slot], [chunk])
                for row in range(len(chunk)):
                    following = start + row + 1
                    if following < len(tokens):
                        raw = raw_logprobs(logits[row], len(tokenizer))
                        entries.append(entry(tokens[following], raw, top, tokenizer))
        except Exception as exc:
            self._fail(slot, exc)
            return
        seq.prompt_logprobs = entries
        parts.append(([slot], _owned_float32(logits[-1:])))

    def _logprob_entry(self, seq: TokenSequence, raw_row: np.ndarray, token: int) -> dict:
        """The sampled ``token``'s entry in the distribution ``logprobs_mode`` names."""
        if seq.params.logprobs_mode == PROCESSED:
            forbidden = self._forbidden_for(raw_row.shape[-1])
            values = processed_logprobs(raw_row, seq.params, seq.seen, forbidden)
        else:
            values = raw_logprobs(raw_row, len(self.model.tokenizer))
        return entry(token, values, seq.params.logprobs or 0, self.model.tokenizer)

    # Bookkeeping ---------------------------------------------------------------------------
    def _forbidden_for(self, vocab: int) -> np.ndarray:
        if self._forbidden is None:
            tokenizer = self.model.tokenizer
            self._forbidden = forbidden_mask(vocab, len(tokenizer), tokenizer.never_generate)
        return self._forbidden

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


def choose_admissions(lengths: list[int], free: int, *, bucketing: bool = True) -> list[int]:
    """Positions (ascending) of the waiting records to admit into ``free`` slots.

    ``lengths`` are the prompt lengths of the window, oldest first. The oldest is always
    admitted, so no record waits longer than it takes the window to pass it; with
    ``bucketing`` the others are those whose lengths are closest to the oldest's (ties: the
    older first), else simply the next ones.
    """
    if free <= 0 or not lengths:
        return []
    if free >= len(lengths) or not bucketing:
        return list(range(min(free, len(lengths))))
    anchor = lengths[0]
    closest = sorted(range(1, len(lengths)), key=lambda i: (abs(lengths[i] - anchor), i))
    return [0, *sorted(closest[: free - 1])]


def _owned_float32(logits: np.ndarray) -> np.ndarray:
    """The sampler masks logits in place: make sure they are a writable float32 array."""
    if logits.dtype != np.float32 or not logits.flags.writeable:
        return np.array(logits, dtype=np.float32)
    return logits
