"""Running a checked plan from the command line: output, signals, exit status.

The session runs; this module owns what is the command line's alone: where the JSONL goes
(a file through an :class:`~gpt_simple_core.jobs.output.OutputJob`, which resumes and refuses
to destroy data, or stdout), which signals stop the run (SIGTERM, SIGINT, and SIGUSR1: Slurm's
warning before a time limit), ``--max-runtime``, and the exit status a wrapper script reads
(docs/cli.md, docs/long-sweeps.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import structlog

from gpt_simple_core.engine.executor import Executor
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
from gpt_simple_core.jobs.output import OutputJob, OutputMode
from gpt_simple_core.jobs.shards import ShardSpec, assign, shard_plan
from gpt_simple_core.output.openai import OpenAIOutput
from gpt_simple_core.output.spool import Spool, clean_stale_spools
from gpt_simple_core.output.writer import OrderedWriter
from gpt_simple_core.plan.planned import Planned
from gpt_simple_core.records.source import InputDigest
from gpt_simple_core.session import Session
from gpt_simple_core.settings import Settings

log = structlog.get_logger(__name__)

#: Why a run stopped -> its exit status (``max-runtime`` is a time limit, like Slurm's USR1).
STOPPED_STATUS = {
    "SIGTERM": EXIT_TERMINATED,
    "SIGINT": EXIT_INTERRUPTED,
    "SIGUSR1": EXIT_USR1,
    "max-runtime": EXIT_USR1,
}
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
STDOUT = "-"


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--output", metavar="FILE", help="output JSONL ('-' or absent: stdout)")
    group.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=("yes", "force"),
        help="continue an interrupted --output: keep its finished records, run the rest "
        "(=force: even if the input, defaults or checkpoints changed; records whose inputs "
        "changed run again)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    group.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --resume: run again the records that carry an error",
    )
    group.add_argument(
        "--max-runtime",
        type=float,
        metavar="SECONDS",
        help="stop cleanly after this long (exit 138, resumable), like SIGUSR1",
    )


def check_output_for_dry_run(args: argparse.Namespace, input_path: Path | None) -> None:
    """Raise :class:`ConfigError` where the real run would refuse its ``--output``."""
    output = output_path(args)
    if output is None:
        return
    refusal = OutputJob(output, output_mode(args), input_path=input_path).dry_run_refusal()
    if refusal is not None:
        raise ConfigError(f"the plan is valid, but {refusal}")


def output_path(args: argparse.Namespace) -> Path | None:
    """The --output file, or None for stdout (absent or '-')."""
    return None if args.output in (None, STDOUT) else Path(args.output).expanduser()


def output_mode(args: argparse.Namespace) -> OutputMode:
    if args.output in (None, STDOUT) and (args.resume or args.overwrite):
        raise ConfigError("--resume and --overwrite need --output FILE (stdout cannot resume)")
    if args.retry_errors and not args.resume:
        raise ConfigError("--retry-errors goes with --resume")
    return OutputMode(
        resume=bool(args.resume),
        force=args.resume == "force",
        overwrite=args.overwrite,
        retry_errors=args.retry_errors,
    )


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


PlanFn = Callable[[Session], tuple[Planned, InputDigest]]


def run_command(
    args: argparse.Namespace,
    settings: Settings,
    registry: Any,
    plan: PlanFn,
    *,
    input_path: Path | None,
    on_problems: Callable[[Planned], int],
    shard: ShardSpec | None = None,
    executor: Executor | None = None,
    shape_for: Callable[[InputDigest], OpenAIOutput] | None = None,
) -> int:
    """The run of ``generate`` and ``batch-generate``: the output job (locks, refusals and
    the previous run seed, before planning), the plan (and this shard's part of it), then the
    run; the exit status. ``shape_for``: the output shape of another format, for this input."""
    output = output_path(args)
    if shard is not None and output is None:
        raise ConfigError("--shard needs --output FILE: merge reads each shard's manifest")
    stop = Stop(deadline=time.monotonic() + args.max_runtime if args.max_runtime else None)
    job = OutputJob(output, output_mode(args), input_path=input_path) if output else None
    with stopping_on_signals(stop), job or nullcontext():
        with stop.interruptible():  # planning holds nothing worth finishing: stop at once
            session = Session(job.settings(settings) if job else settings, registry)
            planned, digest = plan(session)
        if not planned.plan.ok:
            return on_problems(planned)
        shape = shape_for(digest) if shape_for else None
        if job is None:
            result = _run_to_stdout(session, planned, stop, executor, shape)
        elif shard is None:
            result = job.run(session, planned, digest, stop=stop, executor=executor, shape=shape)
        else:
            result = _run_shard(job, session, planned, digest, shard, stop, executor, shape)
    return exit_status(result)


def _run_shard(
    job: OutputJob,
    session: Session,
    planned: Planned,
    digest: InputDigest,
    shard: ShardSpec,
    stop: Stop,
    executor: Executor | None,
    shape: OpenAIOutput | None = None,
) -> RunResult:
    assignment = assign(planned, shard.count)
    indexes = assignment.indexes(shard.index)
    mine = assignment.summary(planned)[shard.index]
    log.info(
        f"shard {shard}: {len(indexes)} of {planned.plan.records} records",
        groups=len(mine["groups"]),
        estimated_cost=mine["cost"],
    )
    info = {"shard": str(shard), "count": shard.count, "assignment": assignment.fingerprint}
    return job.run(
        session,
        shard_plan(planned, indexes),
        digest,
        stop=stop,
        order=indexes,
        order_info=info,
        executor=executor,
        shape=shape,
    )


def _run_to_stdout(
    session: Session,
    planned: Planned,
    stop: Stop,
    executor: Executor | None,
    shape: OpenAIOutput | None = None,
) -> RunResult:
    clean_stale_spools()
    order, spool = range(planned.plan.records), Spool.private()
    line = shape.line if shape else None
    writer = OrderedWriter(sys.stdout, order, spool, name="stdout", shape=line)
    try:
        return session.run(planned, writer, stop=stop, executor=executor)
    finally:
        writer.close()
