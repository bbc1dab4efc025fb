"""``gpt-simple score``: log-likelihoods of given text, as lm-evaluation-harness asks for them
(``loglikelihood`` and ``loglikelihood_rolling``), through the same planner and engine as a
sweep: per-record models, dry-run, hard and soft errors, ordered output, ``--resume``."""

from __future__ import annotations

import argparse

from gpt_simple_core.cli.batch_generate import run_sweep
from gpt_simple_core.cli.execute import add_output_options
from gpt_simple_core.cli.options import add_input_options, add_model_options, add_run_options
from gpt_simple_core.records.parse import SCORE
from gpt_simple_core.registry import Registry

HELP = (
    'score text: {"context", "continuation"} records get log P(continuation | context), '
    '{"text"} records a rolling log-likelihood'
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("score", help=HELP, description=HELP + ".")
    parser.add_argument(
        "--input", required=True, metavar="JSONL", help="records to score: a file, a FIFO or '-'"
    )
    add_input_options(parser)
    add_output_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="check everything and print the plan; load nothing"
    )
    parser.add_argument(
        "--plan-format", choices=("text", "json"), default="text", help="dry-run output format"
    )
    add_model_options(parser, default_help="default model for records that name none")
    add_run_options(parser)
    return parser


def run(args: argparse.Namespace, registry: Registry) -> int:
    return run_sweep(args, registry, kind=SCORE)
