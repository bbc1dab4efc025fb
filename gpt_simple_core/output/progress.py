"""Progress on stderr: a live line on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import IO

import structlog

from gpt_simple_core.logs import LIVE_LINE
from gpt_simple_core.wording import noun

log = structlog.get_logger(__name__)

LOG_EVERY_SECONDS = 15.0
REDRAW_EVERY_SECONDS = 0.2


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Counts finished records and generated tokens; never writes to stdout."""

    def __init__(self, total: int, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.live = self.enabled and self.stream.isatty()
        self.done = 0
        self.failed = 0
        self.tokens = 0
        self.started = time.monotonic()
        self._last_draw = 0.0

    def add_tokens(self, n: int) -> None:
        self.tokens += n
        self._maybe_show()

    def record_done(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self._maybe_show(force=self.done == self.total)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.tokens / elapsed
        remaining = (self.total - self.done) * elapsed / self.done if self.done else 0.0
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.done}/{self.total} {noun(self.total, 'record')}{failed} | {rate:.1f} tok/s | "
            f"ETA {_eta(remaining) if self.done else '?'}"
        )

    def _maybe_show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        interval = REDRAW_EVERY_SECONDS if self.live else LOG_EVERY_SECONDS
        if not force and now - self._last_draw < interval:
            return
        self._last_draw = now
        if self.live:
            # through the process's live line, so log lines step around it (logs.LiveLine)
            LIVE_LINE.draw(self.stream, self.line())
        else:
            log.info("progress", status=self.line())

    def close(self) -> None:
        if self.live:
            LIVE_LINE.end()
