"""``gpt-simple generate``: one model, one set of sampling parameters, many prompts.

JSONL on stdout, or with ``--stream`` (the default for one prompt on a terminal) the text as it
is decoded, as HipGPT's ``generate`` prints it; HipGPT's flag spellings are accepted too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from gpt_simple_core.checkpoints.resolve import DEFAULT_MODEL
from gpt_simple_core.cli.execute import (
    add_output_options,
    exit_status,
    output_mode,
    output_path,
    run_command,
    stopping_on_signals,
)
from gpt_simple_core.cli.options import (
    add_input_options,
    add_model_options,
    add_run_options,
    add_sampling_options,
    effective_settings,
)
from gpt_simple_core.cli.problems import report_problems
from gpt_simple_core.cli.streaming import StreamPrinter
from gpt_simple_core.engine.stop import Stop
from gpt_simple_core.exit_codes import EXIT_INVALID
from gpt_simple_core.plan.planned import Planned
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.source import STDIN, InputDigest, read_records
from gpt_simple_core.registry import Registry
from gpt_simple_core.session import Session
from gpt_simple_core.settings import Settings, with_default_model

HELP = "generate completions for prompts with one model and one set of sampling parameters"
log = structlog.get_logger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help=HELP, description=HELP + ".")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    prompts.add_argument(
        "--prompts-file",
        metavar="JSONL",
        help='one {"prompt": ...} object per line, extra keys echoed: a file, a pipe or '
        "FIFO such as <(...), or '-' for stdin",
    )
    add_input_options(parser)
    add_output_options(parser)
    add_stream_options(parser)
    add_model_options(parser, default_help=f"default: the embedded {DEFAULT_MODEL}", hipgpt=True)
    add_run_options(parser)
    add_sampling_options(parser, hipgpt=True)
    return parser


def _bool(value: str) -> bool:
    """HipGPT's ``--stream true|false`` (and the usual spellings of yes and no)."""
    lowered = value.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("streaming")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--stream",
        nargs="?",
        const=True,
        type=_bool,
        metavar="true|false",
        help="print the completion's text as it is decoded, not JSONL (default: on for one "
        "--prompt when stdout is a terminal); with --output the JSONL still goes to the file",
    )
    mode.add_argument(
        "--no-stream",
        dest="stream",
        action="store_const",
        const=False,
        help="JSONL on stdout even on a terminal",
    )
    group.add_argument(
        "--delay-ms",
        "--delay_ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="when streaming, pause this long after each token (as HipGPT's --delay_ms)",
    )


def streaming(args: argparse.Namespace) -> bool:
    """Whether this run streams: as asked, else for one ``--prompt`` when stdout is a
    terminal (a pipe keeps getting clean JSONL)."""
    if args.stream is not None:
        return bool(args.stream)
    one_prompt = args.prompt is not None and len(args.prompt) == 1
    return one_prompt and sys.stdout.isatty()


def _records(args: argparse.Namespace) -> tuple[list[Record], list, InputDigest]:
    if args.prompt is not None:
        records = [Record(i, i + 1, text, {"prompt": text}) for i, text in enumerate(args.prompt)]
        text = json.dumps(args.prompt, ensure_ascii=False).encode("utf-8")
        return records, [], InputDigest("--prompt", None, hashlib.sha256(text).hexdigest())
    return read_records(args.prompts_file, allow_blocks=False, max_line_bytes=args.max_line_bytes)


def run(args: argparse.Namespace, registry: Registry) -> int:
    settings = with_default_model(effective_settings(args))

    def plan(session: Session) -> tuple[Planned, InputDigest]:
        records, problems, digest = _records(args)
        return session.plan(records, problems, source=digest.name), digest

    def refuse(planned: Planned) -> int:
        report_problems(planned.plan)
        return EXIT_INVALID

    printer = None
    if streaming(args):
        printer = StreamPrinter(sys.stdout, delay_ms=args.delay_ms)
    elif args.delay_ms:
        log.warning("--delay-ms applies when streaming (--stream): ignored")
    if printer is not None and output_path(args) is None:
        return _stream_to_stdout(args, settings, registry, plan, refuse, printer)

    def plan_streamed(session: Session) -> tuple[Planned, InputDigest]:
        if printer is not None:  # the JSONL goes to --output, the text to the terminal
            session.stream_to(printer)
        return plan(session)

    from_file = args.prompts_file not in (None, STDIN)
    try:
        return run_command(
            args,
            settings,
            registry,
            plan_streamed,
            input_path=Path(args.prompts_file) if from_file else None,
            on_problems=refuse,
        )
    finally:
        if printer is not None:
            printer.close()


def _stream_to_stdout(
    args: argparse.Namespace,
    settings: Settings,
    registry: Registry,
    plan: Callable[[Session], tuple[Planned, InputDigest]],
    refuse: Callable[[Planned], int],
    printer: StreamPrinter,
) -> int:
    """A streamed run without ``--output``: the text is the output (no JSONL, no spool).
    Signals and ``--max-runtime`` stop it between two tokens, as any run (exit 130, 138,
    143)."""
    output_mode(args)  # the refusals of any stdout run (--resume needs --output)
    deadline = time.monotonic() + args.max_runtime if args.max_runtime else None
    stop = Stop(deadline=deadline)
    with stopping_on_signals(stop):
        with stop.interruptible():  # planning holds nothing worth finishing: stop at once
            session = Session(settings, registry, progress=False)
            planned, _ = plan(session)
        if not planned.plan.ok:
            return refuse(planned)
        try:
            result = session.run(planned, printer, stop=stop)
        finally:
            printer.close()
    return exit_status(result)
