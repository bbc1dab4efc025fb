"""Bounds the plan puts on what a run may ask for, before anything loads.

* threads: no more than the CPUs this process may use (more only queue behind each other, and
  some runtimes crash creating 100,000 of them);
* records that cannot fit in memory: a row holds its prompt and ``max_new_tokens`` (or the
  model's context, when the policy stops a row there), and its KV cache costs
  ``CheckpointInfo.kv_values_per_token`` values a token. A record whose row certainly needs
  more than the memory the run may use is named in a warning; at run time it is that record's
  error (:func:`gpt_simple_core.engine.capacity.too_long`), never the run's.

Prompt lengths come from a cheap bound (no prompt is tokenized while planning): a token covers
at most ``max_token_bytes`` bytes and a character at least one byte, so a prompt has at least
``characters / max_token_bytes`` tokens.
"""

from __future__ import annotations

from gpt_simple_core.cpus import usable_cpus
from gpt_simple_core.plan.memory import (
    KV_SHARE,
    available_memory,
    budget_from,
    gib,
    total_memory,
)
from gpt_simple_core.plan.planned import PlannedGroup, PlannedRecord
from gpt_simple_core.protocol import (
    DTYPE_BYTES,
    OVERFLOW_TRUNCATE,
    OVERFLOW_WINDOW,
    LoadRequest,
)
from gpt_simple_core.wording import plural

BOUNDED_POLICIES = (OVERFLOW_TRUNCATE, OVERFLOW_WINDOW)


def bounded_threads(threads: int | None) -> tuple[int | None, str | None]:
    """``threads`` capped at the usable CPUs, and the warning saying so (None: unchanged)."""
    cpus = usable_cpus()
    if threads is None or threads <= cpus:
        return threads, None
    return cpus, (
        f"threads {threads} is more than the {plural(cpus, 'CPU')} this process may use: using "
        f"{cpus} "
        f"(more threads than CPUs only queue behind each other)"
    )


def min_prompt_tokens(prompt: str, max_token_bytes: int) -> int:
    """A lower bound of the tokens of ``prompt``, without tokenizing it."""
    return max(1, -(-len(prompt) // max(1, max_token_bytes)))


def _bytes_per_value(group: PlannedGroup) -> int:
    """Bytes of one cached value: the dtype's, or for ``auto`` the smallest the backend runs
    (so a warning is only given for records that fail whatever ``auto`` resolves to)."""
    dtype = group.request.dtype
    if dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    known = [DTYPE_BYTES[d] for d in group.backend.dtypes if d in DTYPE_BYTES]
    return min(known, default=min(DTYPE_BYTES.values()))


def _ceiling(request: LoadRequest) -> tuple[int | None, str]:
    """The most bytes a run may use for rows, and what that is: on the CPU, the engine's
    budget; elsewhere (a GPU, or ``auto``) only the machine's memory is known now."""
    if request.device.kind == "cpu":
        return budget_from(available_memory()), "this run's CPU memory budget"
    total = total_memory()
    return (int(total / KV_SHARE) if total else None), "this machine's memory"


def _row(planned: PlannedRecord, longest: int, context: int | None) -> int:
    """The fewest tokens ``planned``'s row will hold; records the lower bound of its prompt
    on it (``min_prompt_tokens``) for the engine's check before tokenizing."""
    tokens = min_prompt_tokens(planned.record.prompt, longest)
    if tokens > 1:
        planned.min_prompt_tokens = tokens
    row = tokens + planned.max_new_tokens
    return min(row, context) if context else row


def fit_warnings(group: PlannedGroup) -> list[str]:
    """A warning naming the records of ``group`` that cannot fit in memory (see the module)."""
    values = group.info.kv_values_per_token
    ceiling, where = _ceiling(group.request)
    if not values or ceiling is None:
        return []
    per_token = values * _bytes_per_value(group)
    limit = int(ceiling * KV_SHARE) // per_token  # tokens one row may hold
    policy = group.request.context_overflow or group.backend.context_overflow[0]
    context = group.info.context_length if policy in BOUNDED_POLICIES else None
    if context and context <= limit:
        return []  # rows stop at the context, which fits
    longest = group.info.details.get("max_token_bytes") or 1
    failing = [p for p in group.records if _row(p, longest, context) > limit]
    if not failing:
        return []
    first = failing[0]
    need = _row(first, longest, context) * per_token
    return [
        f"{plural(len(failing), 'record')} cannot fit in memory (line {first.record.line} "
        f"first): its prompt + max_new_tokens needs at least {gib(need)} of KV cache for one "
        f"row, more than {where} allows ({gib(int(ceiling * KV_SHARE))}); each will be that "
        f"record's error (lower max_new_tokens, or --context-overflow truncate)"
    ]
