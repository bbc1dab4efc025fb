"""Logging setup: structlog, always to stderr (stdout carries only JSONL or the plan)."""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog

LEVELS = ("debug", "info", "warning", "error")


CLEAR_LINE = "\r\x1b[K"  # back to the start of the line, then erase it


class LiveLine:
    """The one status line redrawn in place on a terminal (``\\r``), such as the progress line.

    A log line written while it is shown would start in the middle of it and leave its
    remains on screen, so the log stream asks it to step aside: :meth:`clear` erases it before
    the log line, :meth:`redraw` puts it back below once the log line is complete.
    """

    def __init__(self) -> None:
        self.text: str | None = None  # what the line says (None: no live line)
        self.shown = False  # whether it is on screen now
        self.stream: IO[str] | None = None

    def draw(self, stream: IO[str], text: str) -> None:
        """Show ``text`` as the live line of ``stream`` (replacing what it said)."""
        self.stream, self.text, self.shown = stream, text, True
        stream.write(CLEAR_LINE + text)
        stream.flush()

    def clear(self, stream: IO[str]) -> None:
        """Erase the live line if it is shown on ``stream`` (it stays live: see redraw)."""
        if self.shown and self.stream is stream:
            stream.write(CLEAR_LINE)
            self.shown = False

    def redraw(self, stream: IO[str]) -> None:
        """Show the live line again on ``stream`` after something else was written there."""
        if self.text is not None and not self.shown and self.stream is stream:
            stream.write(self.text)
            stream.flush()
            self.shown = True

    def end(self) -> None:
        """Leave the last text on screen, on its own line; there is no live line after."""
        if self.text is not None and self.stream is not None:
            if not self.shown:
                self.stream.write(self.text)
            self.stream.write("\n")
            self.stream.flush()
        self.text, self.shown, self.stream = None, False, None


#: The live line of this process (there is one stderr, so one live line).
LIVE_LINE = LiveLine()


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing, not when logging was
    configured: a notebook or a test harness that swaps ``sys.stderr`` still gets the logs.

    A log line never lands on the live progress line: the live line is erased first and
    redrawn once the log line ends (structlog prints the line, then its newline).
    """

    def write(self, text: str) -> int:
        stream = sys.stderr
        LIVE_LINE.clear(stream)
        written = stream.write(text)
        if text.endswith("\n"):
            LIVE_LINE.redraw(stream)
        return written

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(log_format: str = "console", level: str = "info") -> None:
    """Send structlog output to stderr, human-readable (``console``) or one JSON object a line."""
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S" if log_format != "json" else "iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )


def ensure_configured(level: str = "info") -> None:
    """Configure stderr logging at ``level`` unless the application already configured
    structlog (the CLI does, at its ``--log-level``).

    structlog's default prints to stdout, which would corrupt JSONL output. The Python API
    asks for warnings only: a library call should not chatter on stderr.
    """
    if not structlog.is_configured():
        configure(level=level)
