"""``gpt-simple merge``: the shards' outputs of a sweep, back into one output in input order."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from gpt_simple_core.exit_codes import EXIT_OK
from gpt_simple_core.jobs.merge import merge
from gpt_simple_core.registry import Registry

HELP = "merge the outputs of a sweep's shards (batch-generate --shard) into one, in input order"
log = structlog.get_logger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("merge", help=HELP, description=HELP + ".")
    parser.add_argument("outputs", nargs="+", type=Path, metavar="SHARD_OUTPUT")
    parser.add_argument("--input", required=True, type=Path, metavar="JSONL", help="the sweep")
    parser.add_argument("--output", required=True, type=Path, metavar="FILE", help="merged JSONL")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def run(args: argparse.Namespace, registry: Registry) -> int:
    result = merge(args.outputs, args.input, args.output, overwrite=args.overwrite)
    log.info("merged", records=result.records, shards=result.shards, output=str(result.output))
    return EXIT_OK
