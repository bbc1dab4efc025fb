"""What every worker shares: the JSON line it answers with, and timing."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any


def emit(result: dict[str, Any]) -> None:
    """The worker's answer: one JSON line on stdout (logs go to stderr)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """Fastest of ``repeats`` timed calls, in seconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_growth(load: Callable[[], Any]) -> tuple[int, Any]:
    """Peak resident memory growth (bytes) while ``load()`` runs, and what it returned.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) first, so the peak is
    this call's, not the imports'.
    """

    def status(key: str) -> int:
        with open("/proc/self/status", encoding="ascii") as handle:
            line = next(line for line in handle if line.startswith(key))
        return 1024 * int(line.split()[1])

    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    before = status("VmRSS:")
    result = load()
    return status("VmHWM:") - before, result
