"""Command-line options shared by the commands, and the settings layer they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.records.converter import structure_block
from gpt_simple_core.records.parse import parse_generation
from gpt_simple_core.records.schema import ModelSpec, normalize_dtype
from gpt_simple_core.records.source import MAX_LINE_BYTES, parse_line_limit
from gpt_simple_core.settings import RunOptions, Settings, load_config
from gpt_simple_core.wording import noun

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
    "logprobs": "--logprobs",
    "prompt_logprobs": "--prompt-logprobs",
    "logprobs_mode": "--logprobs-mode",
}
#: HipGPT's ``generate`` flag -> ours, accepted by ``gpt-simple generate`` (docs/hipgpt.md):
#: a HipGPT user's command line keeps working. Only spellings that mean nothing else here.
HIPGPT_ALIASES = {
    "--max-new-tokens": ("--num_tokens",),
    "--temperature": ("--temp",),
    "--top-k": ("--top_k",),
    "--top-p": ("--top_p",),
    "--stop-token-id": ("--eos_id",),
    "--checkpoint": ("--ckpt",),
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


def _line_limit(value: str) -> int:
    try:
        return parse_line_limit(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """``--max-line-bytes``: the cap on one input line (an endless line, such as ``/dev/zero``,
    must not grow without bound); a longer line is that line's problem."""
    parser.add_argument(
        "--max-line-bytes",
        type=_line_limit,
        default=MAX_LINE_BYTES,
        metavar="N",
        help=f"longest input line read, in bytes (K/M/G suffixes; default {MAX_LINE_BYTES >> 20}M)",
    )


def _spellings(flag: str, hipgpt: bool) -> tuple[str, ...]:
    """``flag``, and its HipGPT spelling when the command accepts those."""
    return (flag, *HIPGPT_ALIASES.get(flag, ())) if hipgpt else (flag,)


def add_model_options(
    parser: argparse.ArgumentParser, *, default_help: str, hipgpt: bool = False
) -> None:
    """The model options; ``hipgpt`` also accepts HipGPT's spelling (``--ckpt``)."""
    group = parser.add_argument_group("model")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        *_spellings("--checkpoint", hipgpt),
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
    group.add_argument(
        "--quantize",
        metavar="NAME",
        help="weight quantization: int8 or int4 (weight-only; backend onnx), or none",
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
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: gpt-simple.toml, else the [tool.gpt-simple] table of "
        "pyproject.toml; the file read is logged and shown in the plan)",
    )


def add_sampling_options(parser: argparse.ArgumentParser, *, hipgpt: bool = False) -> None:
    """The sampling options; ``hipgpt`` also accepts HipGPT's spellings (``--num_tokens``,
    ``--temp``, ``--top_k``, ``--top_p``, ``--eos_id``)."""
    group = parser.add_argument_group("sampling (defaults: see docs/sampling.md)")

    def add(flag: str, help: str, **kwargs: Any) -> None:
        group.add_argument(*_spellings(flag, hipgpt), help=help, **kwargs)

    add("--max-new-tokens", "default 100", type=int)
    add("--temperature", "default 0.8", type=float)
    add("--top-k", "default 50; 0 disables", type=int)
    add("--top-p", "default 0.95; 1 disables", type=float)
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
    add("--stop-token-id", "stop token (repeatable)", action="append", type=int, metavar="ID")
    group.add_argument("--ignore-eos", action="store_true", default=None, help="do not stop at EOS")
    group.add_argument(
        "--return-full-text",
        action="store_true",
        default=None,
        help="completion includes the prompt",
    )
    group.add_argument(
        "--logprobs",
        type=int,
        metavar="K",
        help="each generated token's logprob and its top K alternatives (0..20)",
    )
    group.add_argument(
        "--prompt-logprobs", type=int, metavar="K", help="the same for the prompt's tokens"
    )
    group.add_argument(
        "--logprobs-mode",
        choices=("raw", "processed"),
        help="raw: the model's distribution (default); processed: the one sampling draws from",
    )


def _flag_errors(problems: list, flags: dict[str, str]) -> ConfigError:
    lines = [f"{flags.get(p.field, p.field)}: {p.message}" for p in problems]
    return ConfigError(f"invalid {noun(len(lines), 'option')}:\n  " + "\n  ".join(lines))


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
    checkpoint = getattr(args, "checkpoint", None)
    model = ModelSpec(
        # `is None`, not `or`: an empty --checkpoint "" is a mistake to report, not "none given"
        checkpoint=checkpoint if checkpoint is not None else getattr(args, "output_dir", None),
        tokenizer=getattr(args, "tokenizer", None),
        backend=getattr(args, "backend", None),
        dtype=getattr(args, "dtype", None),
        quantize=getattr(args, "quantize", None),
    )
    assert generation is not None and run is not None
    return Settings(
        run=run, model=model, generation=attrs.evolve(generation), source="command line"
    )


def effective_settings(args: argparse.Namespace) -> Settings:
    """Command line over config file (built-in generation defaults are applied per record)."""
    return settings_from_args(args).over(load_config(getattr(args, "config", None), Path.cwd()))
