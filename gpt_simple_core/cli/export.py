"""``gpt-simple export``: write a checkpoint in another format (e.g. ONNX)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpt_simple_core.checkpoints.resolve import resolve_checkpoint
from gpt_simple_core.errors import BackendError, ConfigError
from gpt_simple_core.protocol import ExportOptions, normalize_dtype
from gpt_simple_core.registry import Registry

HELP = "export a checkpoint to another format (e.g. ONNX), as a folder --checkpoint accepts"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help=HELP, description=HELP + ".")
    parser.add_argument("checkpoint", help="checkpoint or run directory")
    parser.add_argument("--format", required=True, help="target format (e.g. onnx)")
    parser.add_argument("--out", required=True, type=Path, help="new folder to write")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer to use instead")
    parser.add_argument("--dtype", default="fp32", help="weights dtype of the export")
    parser.add_argument("--quantize", choices=("int8",), help="quantize the export")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    return parser


def run(args: argparse.Namespace, registry: Registry) -> int:
    exporters = registry.exporters
    exporter = exporters.get(args.format)
    if exporter is None:
        known = ", ".join(sorted(exporters)) or "none installed"
        raise BackendError(f"no exporter for format {args.format!r} (available: {known})")
    missing = exporter.missing_dependencies()
    if missing:
        hint = registry.install_hint(exporter)
        raise BackendError(f"exporting to {args.format} needs {', '.join(missing)} ({hint})")
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"{args.out} exists and is not empty")
    info = resolve_checkpoint(args.checkpoint, registry, tokenizer=args.tokenizer)
    if info.format not in exporter.formats:
        raise BackendError(
            f"the {args.format} exporter reads {', '.join(exporter.formats)} checkpoints, "
            f"not {info.format}"
        )
    try:
        dtype = normalize_dtype(args.dtype)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    options = ExportOptions(dtype=dtype, quantize=args.quantize, opset=args.opset)
    summary = exporter.export(info, args.out, options)
    print(json.dumps(dict(summary), indent=2))
    return 0
