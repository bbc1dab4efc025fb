"""Logging setup: structlog, always to stderr (stdout carries only JSONL or the plan)."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing, not when logging was
    configured: a notebook or a test harness that swaps ``sys.stderr`` still gets the logs."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

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
