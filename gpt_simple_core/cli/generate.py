"""``gpt-simple generate``: one model, one set of sampling parameters, many prompts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import attrs
import structlog

from gpt_simple_core.checkpoints.resolve import DEFAULT_MODEL
from gpt_simple_core.cli.execute import run_plan
from gpt_simple_core.cli.options import (
    add_model_options,
    add_run_options,
    add_sampling_options,
    effective_settings,
)
from gpt_simple_core.cli.problems import report_problems
from gpt_simple_core.errors import ConfigError
from gpt_simple_core.exit_codes import EXIT_INVALID
from gpt_simple_core.records.parse import Record, parse_lines, read_jsonl
from gpt_simple_core.registry import Registry
from gpt_simple_core.session import Session

HELP = "generate completions for prompts with one model and one set of sampling parameters"
log = structlog.get_logger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help=HELP, description=HELP + ".")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    prompts.add_argument(
        "--prompts-file",
        metavar="JSONL",
        help="one {\"prompt\": ...} object per line, extra keys echoed ('-' for stdin)",
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="output JSONL (default: stdout)"
    )
    add_model_options(parser, default_help=f"default: the embedded {DEFAULT_MODEL}")
    add_run_options(parser)
    add_sampling_options(parser)
    return parser


def _records(args: argparse.Namespace) -> tuple[list[Record], list, str]:
    if args.prompt is not None:
        records = [Record(i, i + 1, text, {"prompt": text}) for i, text in enumerate(args.prompt)]
        return records, [], "--prompt"
    if args.prompts_file == "-":
        records, problems = parse_lines(sys.stdin.buffer, allow_blocks=False)
        return records, problems, "<stdin>"
    path = Path(args.prompts_file)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} does not exist")
    records, problems = read_jsonl(path, allow_blocks=False)
    return records, problems, args.prompts_file


def run(args: argparse.Namespace, registry: Registry) -> int:
    settings = effective_settings(args)
    if settings.model.path is None:
        log.info("no --checkpoint given: using the embedded default model", model=DEFAULT_MODEL)
        settings = attrs.evolve(
            settings, model=attrs.evolve(settings.model, checkpoint=DEFAULT_MODEL)
        )
    session = Session(settings, registry)
    records, problems, source = _records(args)
    planned = session.plan(records, problems, source=source)
    if not planned.plan.ok:
        report_problems(planned.plan)
        return EXIT_INVALID
    return run_plan(session, planned, args.output)
