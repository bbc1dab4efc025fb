"""``gpt-simple batch-generate``: a self-describing JSONL sweep."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpt_simple_core.cli.execute import add_output_options, run_command
from gpt_simple_core.cli.options import (
    add_model_options,
    add_run_options,
    add_sampling_options,
    effective_settings,
)
from gpt_simple_core.cli.problems import report_problems
from gpt_simple_core.exit_codes import EXIT_INVALID, EXIT_OK
from gpt_simple_core.plan.model import plan_to_json
from gpt_simple_core.plan.planner import Planned
from gpt_simple_core.plan.render import render_text
from gpt_simple_core.records.source import STDIN, InputDigest, read_records
from gpt_simple_core.registry import Registry
from gpt_simple_core.session import Session
from gpt_simple_core.settings import with_default_model

HELP = "run a JSONL sweep where each record may name its own model and sampling parameters"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("batch-generate", help=HELP, description=HELP + ".")
    parser.add_argument(
        "--input",
        required=True,
        metavar="JSONL",
        help="input records: a file, a pipe or FIFO such as <(...), or '-' for stdin",
    )
    add_output_options(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything and print the plan; load nothing (imports no torch)",
    )
    parser.add_argument(
        "--plan-format", choices=("text", "json"), default="text", help="dry-run output format"
    )
    add_model_options(parser, default_help="default model for records that name none")
    add_run_options(parser)
    add_sampling_options(parser)
    return parser


def plan_input(source: str, session: Session) -> tuple[Planned, InputDigest]:
    """Parse and plan ``source`` (a path, a FIFO or '-')."""
    records, problems, digest = read_records(source)
    return session.plan(records, problems, source=digest.name), digest


def _print_plan(planned: Planned, plan_format: str) -> None:
    if plan_format == "json":
        print(json.dumps(plan_to_json(planned.plan), indent=2))
    else:
        sys.stdout.write(render_text(planned.plan))


def _refuse(planned: Planned) -> int:
    report_problems(planned.plan)
    return EXIT_INVALID


def run(args: argparse.Namespace, registry: Registry) -> int:
    settings = with_default_model(effective_settings(args))
    if args.dry_run:
        planned, _ = plan_input(args.input, Session(settings, registry))
        _print_plan(planned, args.plan_format)
        return EXIT_OK if planned.plan.ok else _refuse(planned)
    input_path = None if args.input == STDIN else Path(args.input)
    return run_command(
        args,
        settings,
        registry,
        lambda session: plan_input(args.input, session),
        input_path=input_path,
        on_problems=_refuse,
    )
