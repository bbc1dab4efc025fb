"""``gpt-simple batch-generate``: a self-describing JSONL sweep."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpt_simple_core.cli.execute import run_plan
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
from gpt_simple_core.records.parse import parse_lines, read_jsonl
from gpt_simple_core.registry import Registry
from gpt_simple_core.session import Session

HELP = "run a JSONL sweep where each record may name its own model and sampling parameters"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("batch-generate", help=HELP, description=HELP + ".")
    parser.add_argument(
        "--input", required=True, metavar="JSONL", help="input records ('-' for stdin)"
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="output JSONL (default: stdout)"
    )
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


def plan_input(source: str, session: Session) -> Planned:
    """Parse and plan ``source`` (a path or '-')."""
    if source == "-":
        records, problems = parse_lines(sys.stdin.buffer)
        name = "<stdin>"
    else:
        records, problems = read_jsonl(Path(source))
        name = source
    return session.plan(records, problems, source=name)


def run(args: argparse.Namespace, registry: Registry) -> int:
    settings = effective_settings(args)
    if args.input != "-" and not Path(args.input).is_file():
        print(f"gpt-simple: error: input file {args.input} does not exist", file=sys.stderr)
        return EXIT_INVALID
    session = Session(settings, registry)
    planned = plan_input(args.input, session)
    if args.dry_run:
        if args.plan_format == "json":
            print(json.dumps(plan_to_json(planned.plan), indent=2))
        else:
            sys.stdout.write(render_text(planned.plan))
        if not planned.plan.ok:
            report_problems(planned.plan)
            return EXIT_INVALID
        return EXIT_OK
    if not planned.plan.ok:
        report_problems(planned.plan)
        return EXIT_INVALID
    return run_plan(session, planned, args.output)
