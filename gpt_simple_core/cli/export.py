"""``gpt-simple export``: write a checkpoint in another format (e.g. ONNX)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import structlog

from gpt_simple_core.checkpoints.resolve import resolve_checkpoint
from gpt_simple_core.errors import BackendError, ConfigError
from gpt_simple_core.install import CORE_DISTRIBUTION, install_command
from gpt_simple_core.protocol import ExportOptions, normalize_dtype
from gpt_simple_core.registry import Registry

log = structlog.get_logger(__name__)

HELP = "export a checkpoint to another format (e.g. ONNX), as a folder --checkpoint accepts"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help=HELP, description=HELP + ".")
    parser.add_argument("checkpoint", help="checkpoint or run directory")
    parser.add_argument(
        "--format",
        help="target format (e.g. onnx); default: the installed exporter, when there is one",
    )
    parser.add_argument("--out", required=True, type=Path, help="new folder to write")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer to use instead")
    parser.add_argument("--dtype", default="fp32", help="weights dtype of the export")
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help="quantize the weights: int8 or int4 (weight-only, ONNX Runtime MatMulNBits)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    return parser


def _format(args: argparse.Namespace, registry: Registry) -> str:
    """``--format``, or the only exporter installed: asking for a choice that has one answer
    is friction, but with several exporters a default would be a guess."""
    if args.format is not None:
        return args.format
    names = sorted(registry.exporters)
    if len(names) == 1:
        log.info("export format: the one exporter installed", format=names[0])
        return names[0]
    if not names:
        hint = install_command(CORE_DISTRIBUTION, "export")
        raise BackendError(f"no exporter is installed (the onnx exporter: {hint})")
    raise ConfigError(f"--format is needed: several exporters are installed ({', '.join(names)})")


def _check_out(out: Path) -> None:
    """``--out`` must be a new folder (or an empty one): an export never writes over data."""
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"--out {out}: a symbolic link to nothing (give a new folder)")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder: give a new folder")
    if any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty: give a new folder")


def run(args: argparse.Namespace, registry: Registry) -> int:
    _check_out(args.out)
    exporters = registry.exporters
    args.format = _format(args, registry)
    exporter = exporters.get(args.format)
    if exporter is None:
        known = ", ".join(sorted(exporters)) or "none installed"
        raise BackendError(f"no exporter for format {args.format!r} (available: {known})")
    missing = exporter.missing_dependencies()
    if missing:
        hint = registry.install_hint(exporter)
        raise BackendError(f"exporting to {args.format} needs {', '.join(missing)} ({hint})")
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
    log.info("exporting", checkpoint=str(info.path), format=args.format, out=str(args.out))
    summary = exporter.export(info, args.out, options)
    print(json.dumps(dict(summary), indent=2))
    return 0
