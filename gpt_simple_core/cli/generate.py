"""``gpt-simple generate``: one model, one set of sampling parameters, many prompts."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import structlog

from gpt_simple_core.checkpoints.resolve import DEFAULT_MODEL
from gpt_simple_core.cli.execute import add_output_options, run_command
from gpt_simple_core.cli.options import (
    add_model_options,
    add_run_options,
    add_sampling_options,
    effective_settings,
)
from gpt_simple_core.cli.problems import report_problems
from gpt_simple_core.exit_codes import EXIT_INVALID
from gpt_simple_core.plan.planner import Planned
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.source import STDIN, InputDigest, read_records
from gpt_simple_core.registry import Registry
from gpt_simple_core.session import Session
from gpt_simple_core.settings import with_default_model

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
    add_output_options(parser)
    add_model_options(parser, default_help=f"default: the embedded {DEFAULT_MODEL}")
    add_run_options(parser)
    add_sampling_options(parser)
    return parser


def _records(args: argparse.Namespace) -> tuple[list[Record], list, InputDigest]:
    if args.prompt is not None:
        records = [Record(i, i + 1, text, {"prompt": text}) for i, text in enumerate(args.prompt)]
        text = json.dumps(args.prompt, ensure_ascii=False).encode("utf-8")
        return records, [], InputDigest("--prompt", None, hashlib.sha256(text).hexdigest())
    return read_records(args.prompts_file, allow_blocks=False)


def run(args: argparse.Namespace, registry: Registry) -> int:
    settings = with_default_model(effective_settings(args))

    def plan(session: Session) -> tuple[Planned, InputDigest]:
        records, problems, digest = _records(args)
        return session.plan(records, problems, source=digest.name), digest

    def refuse(planned: Planned) -> int:
        report_problems(planned.plan)
        return EXIT_INVALID

    from_file = args.prompts_file not in (None, STDIN)
    return run_command(
        args,
        settings,
        registry,
        plan,
        input_path=Path(args.prompts_file) if from_file else None,
        on_problems=refuse,
    )
