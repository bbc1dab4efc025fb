"""Command-line options shared by the commands, and the settings layer they make."""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.records.converter import structure_block
from gpt_simple_core.records.parse import parse_generation
from gpt_simple_core.records.schema import ModelSpec, normalize_dtype
from gpt_simple_core.settings import RunOptions, Settings, load_config

#: generation field -> flag, for error messages that name what the user typed
GENERATION_FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "greedy": "--greedy",
    "repetition_penalty": "--repetition-penalty",
    "seed": "--seed",
    "return_full_text": "--return-full-text",
    "stop": "--stop",
    "stop_token_ids": "--stop-token-id",
    "ignore_eos": "--ignore-eos",
}
RUN_FLAGS = {
    "device": "--device",
    "threads": "--threads",
    "batch_size": "--batch-size",
    "max_batch_tokens": "--max-batch-tokens",
    "context_overflow": "--context-overflow",
}


def _dtype(value: str) -> str:
    try:
        return normalize_dtype(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_options(parser: argparse.ArgumentParser, *, default_help: str) -> None:
    group = parser.add_argument_group("model")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--checkpoint",
        metavar="PATH",
        help=f"checkpoint or run directory, a file a backend knows, or builtin:default "
        f"({default_help})",
    )
    where.add_argument(
        "--output-dir",
        metavar="PATH",
        help="the trainer's output_dir (a run directory); same as --checkpoint",
    )
    group.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder (or file) to use")
    group.add_argument("--backend", help="backend to run (default: chosen by format and dtype)")
    group.add_argument(
        "--dtype", type=_dtype, help="fp32, fp16, bf16 or auto (aliases accepted; default auto)"
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    group.add_argument("--threads", type=int, help="CPU threads (default: CPUs available)")
    group.add_argument("--batch-size", type=int, help="rows decoded together (default: auto)")
    group.add_argument(
        "--max-batch-tokens", type=int, help="cap on tokens in one forward call (prefill chunks)"
    )
    group.add_argument(
        "--context-overflow",
        choices=("extrapolate", "truncate"),
        help="past the trained context: keep going (default) or keep the last tokens",
    )
    group.add_argument(
        "--config", type=Path, metavar="FILE", help="config file (default: gpt-simple.toml)"
    )


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (defaults: see docs/sampling.md)")
    group.add_argument("--max-new-tokens", type=int, help="default 100")
    group.add_argument("--temperature", type=float, help="default 0.8")
    group.add_argument("--top-k", type=int, help="default 50; 0 disables")
    group.add_argument("--top-p", type=float, help="default 0.95; 1 disables")
    group.add_argument("--min-p", type=float, help="default 0 (disabled)")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--greedy", action="store_true", default=None, help="argmax decoding (no sampling)"
    )
    mode.add_argument(
        "--sample",
        dest="greedy",
        action="store_false",
        default=None,
        help="sample (the default)",
    )
    group.add_argument("--repetition-penalty", type=float, help="default 1.0 (off)")
    group.add_argument(
        "--seed", type=int, help="run seed: each record's seed is derived from it and its position"
    )
    group.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    group.add_argument(
        "--stop-token-id", action="append", type=int, metavar="ID", help="stop token (repeatable)"
    )
    group.add_argument("--ignore-eos", action="store_true", default=None, help="do not stop at EOS")
    group.add_argument(
        "--return-full-text",
        action="store_true",
        default=None,
        help="completion includes the prompt",
    )


def _flag_errors(problems: list, flags: dict[str, str]) -> ConfigError:
    lines = [f"{flags.get(p.field, p.field)}: {p.message}" for p in problems]
    return ConfigError("invalid option(s):\n  " + "\n  ".join(lines))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The command-line layer of the settings."""
    generation_raw = {
        field: getattr(args, flag.lstrip("-").replace("-", "_"), None)
        for field, flag in GENERATION_FLAGS.items()
        if field != "stop_token_ids"
    }
    generation_raw["stop_token_ids"] = getattr(args, "stop_token_id", None)
    generation_raw = {k: v for k, v in generation_raw.items() if v is not None}
    generation, problems = parse_generation(generation_raw, path="")
    if problems:
        raise _flag_errors(problems, GENERATION_FLAGS)
    run_raw = {k: getattr(args, k, None) for k in RUN_FLAGS}
    run, problems = structure_block(
        {k: v for k, v in run_raw.items() if v is not None}, RunOptions, ""
    )
    if problems:
        raise _flag_errors(problems, RUN_FLAGS)
    model = ModelSpec(
        checkpoint=getattr(args, "checkpoint", None) or getattr(args, "output_dir", None),
        tokenizer=getattr(args, "tokenizer", None),
        backend=getattr(args, "backend", None),
        dtype=getattr(args, "dtype", None),
    )
    assert generation is not None and run is not None
    return Settings(
        run=run, model=model, generation=attrs.evolve(generation), source="command line"
    )


def effective_settings(args: argparse.Namespace) -> Settings:
    """Command line over config file (built-in generation defaults are applied per record)."""
    return settings_from_args(args).over(load_config(getattr(args, "config", None), Path.cwd()))
