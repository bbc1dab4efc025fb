"""Running a checked plan from the command line: output file, signals, exit status.

The session runs; this module owns what is the command line's alone: where the JSONL goes,
which signals stop the run (SIGTERM, SIGINT, SIGUSR1: Slurm's warning before a time limit),
and the exit status a wrapper script reads (docs/cli.md).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from gpt_simple_core.engine.result import RunResult
from gpt_simple_core.engine.stop import Stop
from gpt_simple_core.errors import ConfigError
from gpt_simple_core.exit_codes import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RECORD_ERRORS,
    EXIT_TERMINATED,
    EXIT_USR1,
)
from gpt_simple_core.output.writer import OrderedWriter, spool_path_for
from gpt_simple_core.plan.planner import Planned
from gpt_simple_core.session import Session

#: Why a run stopped -> its exit status (``max-runtime`` is a time limit, like Slurm's USR1).
STOPPED_STATUS = {
    "SIGTERM": EXIT_TERMINATED,
    "SIGINT": EXIT_INTERRUPTED,
    "SIGUSR1": EXIT_USR1,
    "max-runtime": EXIT_USR1,
}
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def exit_status(result: RunResult) -> int:
    """0 all done, 1 some records failed, 130/138/143 stopped early (see STOPPED_STATUS)."""
    if result.stopped is not None:
        return STOPPED_STATUS.get(result.stopped, EXIT_TERMINATED)
    return EXIT_RECORD_ERRORS if result.failed else EXIT_OK


@contextmanager
def stopping_on_signals(stop: Stop) -> Iterator[None]:
    """Route SIGTERM, SIGINT and SIGUSR1 to ``stop`` while the run lasts."""

    def handler(signum: int, frame: Any) -> None:
        stop.request(signal.Signals(signum).name)

    previous = {}
    try:
        for name in SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                previous[number] = signal.signal(number, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextmanager
def open_output(output: Path | None) -> Iterator[IO[str]]:
    if output is None:
        yield sys.stdout
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        stream = output.open("w", encoding="utf-8")
    except OSError as exc:  # a bad --output is bad input, reported before anything loads
        raise ConfigError(f"cannot write output {output}: {exc.strerror or exc}") from None
    with stream:
        yield stream


def run_plan(session: Session, planned: Planned, output: Path | None) -> int:
    """Run ``planned`` into ``output`` (stdout when None); return the exit status."""
    stop = Stop()
    with open_output(output) as stream, stopping_on_signals(stop):
        writer = OrderedWriter(stream, planned.plan.records, spool_path_for(output))
        try:
            result = session.run(planned, writer, stop=stop)
        finally:
            writer.close()
    return exit_status(result)
