"""Logging setup: structlog, always to stderr (stdout carries only JSONL or the plan)."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")


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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def ensure_configured() -> None:
    """Configure stderr logging unless the application already configured structlog.

    structlog's default prints to stdout, which would corrupt JSONL output.
    """
    if not structlog.is_configured():
        configure()
