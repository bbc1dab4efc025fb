"""``gpt-simple validate``: check a checkpoint without loading its weights."""

from __future__ import annotations

import argparse
import json

from gpt_simple_core.api import validate_checkpoint
from gpt_simple_core.exit_codes import EXIT_OK
from gpt_simple_core.registry import Registry

HELP = "check a checkpoint (config, weights present, tokenizer) without loading weights"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("validate", help=HELP, description=HELP + ".")
    parser.add_argument("path", help="checkpoint or run directory, or a file a backend knows")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer to use instead")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def run(args: argparse.Namespace, registry: Registry) -> int:
    result = validate_checkpoint(args.path, tokenizer_path=args.tokenizer, registry=registry)
    summary = {
        "checkpoint": str(result.checkpoint_dir),
        "format": result.format,
        "step": result.step,
        "selected_because": result.selected_because,
        "weights": str(result.weights_file) if result.weights_file else None,
        "tokenizer": str(result.tokenizer_dir) if result.tokenizer_dir else None,
        "eos_id": result.eos_id,
        "parameters": result.param_count,
        "context_length": result.context_length,
        "warnings": list(result.warnings),
    }
    if args.json:
        print(json.dumps(summary | {"model_config": dict(result.model_config)}, indent=2))
    else:
        for key, value in summary.items():
            if key == "warnings":
                for warning in value:
                    print(f"warning: {warning}")
            elif value is not None:
                print(f"{key}: {value}")
        print("ok")
    return EXIT_OK
