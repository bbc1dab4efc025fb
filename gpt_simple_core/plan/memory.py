"""How much memory a run may use, read without importing anything: shared by the plan (which
warns about records that cannot fit) and the engine (which sizes batches and refuses rows).

The numbers come from ``/proc/meminfo`` (Linux); elsewhere they are unknown and the engine
falls back to :data:`FALLBACK_BUDGET`.
"""

from __future__ import annotations

from pathlib import Path

#: Share of the budget for the KV cache; the rest is for one forward call's activations.
KV_SHARE = 0.75
#: Without a budget from the backend: this share of the memory available, at most the cap.
AVAILABLE_SHARE = 0.25
BUDGET_CAP = 4 << 30
FALLBACK_BUDGET = 1 << 30


def meminfo(field: str) -> int | None:
    """A field of ``/proc/meminfo`` (``MemAvailable``, ``MemTotal``) in bytes, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), else None."""
    return meminfo("MemAvailable")


def total_memory() -> int | None:
    """The machine's memory (``MemTotal``) in bytes, else None: no row can hold more."""
    return meminfo("MemTotal")


def budget_from(available: int | None) -> int:
    """A quarter of ``available`` bytes, at most 4 GiB (1 GiB when unknown)."""
    if available is None:
        return FALLBACK_BUDGET
    return max(1 << 20, min(BUDGET_CAP, int(available * AVAILABLE_SHARE)))


def gib(n: int) -> str:
    """``n`` bytes in GiB; astronomic counts (a max_new_tokens of 10**30) as a power of two."""
    return f"{n / (1 << 30):.3g} GiB" if n < 1 << 100 else f"about 2**{n.bit_length() - 1} bytes"
