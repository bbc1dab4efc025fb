"""How many rows decode together and how many tokens go into one forward call.

Both follow from a memory budget unless the user sets them (``--batch-size``,
``--max-batch-tokens``):

* slots: ``budget x KV_SHARE / (kv_bytes_per_token x longest row)``, so every slot can hold
  the longest row the group's first window holds, capped at the model's ``max_batch_size``
  (default :data:`DEFAULT_MAX_SLOTS`: on CPUs, matrix products stop getting cheaper per row
  around there, while attention keeps costing more);
* tokens per call (prefill chunks): the rest of the budget over the model's
  ``activation_bytes_per_token``, between :data:`MIN_CALL_TOKENS` and
  :data:`MAX_CALL_TOKENS`, and never fewer than the slots (a decode step is one call).

Never more slots than the group has records: a backend reserves its cache for every slot, so
one prompt must not pay (in time and memory) for 64.

Rows are bounded too (:func:`row_limit`): a record whose row (prompt + ``max_new_tokens``, or
the context where the model's policy stops a row there: :func:`reachable_length`) would need
more KV cache than the whole budget cannot run, and is that record's error
(:func:`too_long`), found before anything is allocated for it. The cache is reserved up front
only for what rows usually reach (:func:`reserve_length`) and grows from there, so a record
asking for a million tokens that stops at EOS after seven costs a cache for seven.

A backend that says nothing gets :data:`DEFAULT_SLOTS` rows and :data:`DEFAULT_CALL_TOKENS`
tokens per call, the engine's earlier fixed defaults.
"""

from __future__ import annotations

import attrs

from gpt_simple_core.plan.memory import (  # noqa: F401 - re-exported, as they were here
    AVAILABLE_SHARE,
    BUDGET_CAP,
    FALLBACK_BUDGET,
    KV_SHARE,
    available_memory,
    budget_from,
    gib,
)
from gpt_simple_core.protocol import OVERFLOW_TRUNCATE, OVERFLOW_WINDOW, LoadedModel
from gpt_simple_core.wording import plural

DEFAULT_SLOTS = 16
DEFAULT_MAX_SLOTS = 64
DEFAULT_CALL_TOKENS = 4096
MIN_CALL_TOKENS = 256
MAX_CALL_TOKENS = 8192
#: Reserved up front: the longest prompt plus this many new tokens (or the model's context, if
#: longer), at most the longest row; rows that run longer grow the cache as they go.
RESERVE_NEW_TOKENS = 1024
#: Policies under which a row never holds more than the model's context.
BOUNDED_POLICIES = (OVERFLOW_TRUNCATE, OVERFLOW_WINDOW)


@attrs.frozen
class Capacity:
    """What the scheduler runs with, and why (for the log)."""

    slots: int
    call_tokens: int
    budget: int
    reason: str


def default_budget() -> int:
    """A quarter of the memory available now, at most 4 GiB (1 GiB when unknown)."""
    return budget_from(available_memory())


def model_budget(model: LoadedModel) -> int:
    """Bytes ``model`` may spend on its rows' state and one call's activations."""
    return model.memory_budget or default_budget()


def reachable_length(model: LoadedModel, prompt_tokens: int, max_new_tokens: int) -> int:
    """The most tokens a row's state can hold: prompt + ``max_new_tokens``, but no more than
    the context when the model's policy keeps a row within it (truncate, window)."""
    length = prompt_tokens + max_new_tokens
    context = model.context_length
    if context and model.context_overflow in BOUNDED_POLICIES:
        return min(length, context)
    return length


def row_limit(model: LoadedModel, budget: int) -> int | None:
    """The longest row whose KV cache fits the budget's KV share on its own (None: the model
    gives no KV size, so rows are not bounded here)."""
    kv = model.kv_bytes_per_token
    return int(budget * KV_SHARE) // kv if kv else None


def too_long(
    model: LoadedModel, prompt_tokens: int, max_new_tokens: int, limit: int | None
) -> str | None:
    """Why a row of this prompt and budget cannot run (it would not fit in memory even alone),
    or None when it can."""
    length = reachable_length(model, prompt_tokens, max_new_tokens)
    if limit is None or length <= limit:
        return None
    assert model.kv_bytes_per_token
    need = length * model.kv_bytes_per_token
    fix = "lower max_new_tokens or shorten the prompt"
    if model.context_overflow not in BOUNDED_POLICIES:
        fix += " (or use --context-overflow truncate where the backend offers it)"
    prompt = f"{prompt_tokens} tokens" if prompt_tokens > 1 else "at least 1 token"
    return (
        f"prompt ({prompt}) + max_new_tokens ({max_new_tokens}) needs "
        f"{gib(need)} of KV cache for one row, more than this run's memory budget allows "
        f"(at most {limit} tokens a row, {gib(int(model_budget(model) * KV_SHARE))}); {fix}"
    )


def reserve_length(model: LoadedModel, longest_row: int, longest_prompt: int) -> int:
    """How long rows to reserve the cache for up front: ``longest_row``, but no more than the
    longest prompt plus :data:`RESERVE_NEW_TOKENS` (or the context, if longer), since most rows
    stop well before ``max_new_tokens``."""
    usual = max(model.context_length or 0, longest_prompt + RESERVE_NEW_TOKENS)
    return min(longest_row, usual)


def plan_capacity(
    model: LoadedModel,
    *,
    longest_row: int,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    records: int | None = None,
    budget: int | None = None,
) -> Capacity:
    """Slots and tokens per call for ``model`` when rows reach ``longest_row`` tokens and the
    group holds ``records`` records (None: unknown); ``budget`` defaults to
    :func:`model_budget`."""
    budget = budget or model_budget(model)
    kv = model.kv_bytes_per_token
    if batch_size is not None:
        slots, why = batch_size, "--batch-size"
    elif kv:
        cap = model.max_batch_size or DEFAULT_MAX_SLOTS
        fit = int(budget * KV_SHARE) // (kv * max(1, longest_row))
        slots = max(1, min(cap, fit))
        why = f"{fit} rows of {longest_row} tokens fit {budget >> 20} MiB x {KV_SHARE}" + (
            f", capped at {cap}" if fit > cap else ""
        )
    else:
        slots, why = model.max_batch_size or DEFAULT_SLOTS, "default (no KV size from the backend)"
    if records is not None and slots > records:
        slots, why = max(1, records), f"{why}; {plural(records, 'record')} in the group"
    if max_batch_tokens is not None:
        tokens = max_batch_tokens
    elif model.activation_bytes_per_token:
        share = int(budget * (1 - KV_SHARE)) // model.activation_bytes_per_token
        tokens = max(MIN_CALL_TOKENS, min(MAX_CALL_TOKENS, share))
    else:
        tokens = DEFAULT_CALL_TOKENS
    if max_batch_tokens is None:
        tokens = max(tokens, slots)
    return Capacity(slots=slots, call_tokens=tokens, budget=budget, reason=why)
