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

A backend that says nothing gets :data:`DEFAULT_SLOTS` rows and :data:`DEFAULT_CALL_TOKENS`
tokens per call, the engine's earlier fixed defaults.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from gpt_simple_core.protocol import LoadedModel

DEFAULT_SLOTS = 16
DEFAULT_MAX_SLOTS = 64
DEFAULT_CALL_TOKENS = 4096
MIN_CALL_TOKENS = 256
MAX_CALL_TOKENS = 8192
#: Share of the budget for the KV cache; the rest is for one forward call's activations.
KV_SHARE = 0.75
#: Without a budget from the backend: this share of the memory available, at most the cap.
AVAILABLE_SHARE = 0.25
BUDGET_CAP = 4 << 30
FALLBACK_BUDGET = 1 << 30


@attrs.frozen
class Capacity:
    """What the scheduler runs with, and why (for the log)."""

    slots: int
    call_tokens: int
    budget: int
    reason: str


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget() -> int:
    """A quarter of the memory available now, at most 4 GiB (1 GiB when unknown)."""
    available = available_memory()
    if available is None:
        return FALLBACK_BUDGET
    return max(1 << 20, min(BUDGET_CAP, int(available * AVAILABLE_SHARE)))


def plan_capacity(
    model: LoadedModel,
    *,
    longest_row: int,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    records: int | None = None,
) -> Capacity:
    """Slots and tokens per call for ``model`` when rows reach ``longest_row`` tokens and the
    group holds ``records`` records (None: unknown)."""
    budget = model.memory_budget or default_budget()
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
        slots, why = max(1, records), f"{why}; {records} record(s) in the group"
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
