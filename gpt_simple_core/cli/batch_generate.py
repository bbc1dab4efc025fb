"""``gpt-simple batch-generate``: a self-describing JSONL sweep."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import attrs

from gpt_simple_core.cli.execute import add_output_options, check_output_for_dry_run, run_command
from gpt_simple_core.cli.options import (
    add_input_options,
    add_model_options,
    add_run_options,
    add_sampling_options,
    effective_settings,
)
from gpt_simple_core.cli.problems import report_problems
from gpt_simple_core.engine.executor import Executor
from gpt_simple_core.errors import ConfigError
from gpt_simple_core.exit_codes import EXIT_INVALID, EXIT_OK
from gpt_simple_core.jobs.shards import ShardSpec, assign, parse_shard
from gpt_simple_core.output.openai import OpenAIOutput
from gpt_simple_core.plan.model import plan_to_json
from gpt_simple_core.plan.planned import Planned
from gpt_simple_core.plan.render import render_text
from gpt_simple_core.records.openai import ModelMap, read_openai_records
from gpt_simple_core.records.parse import GENERATE
from gpt_simple_core.records.seeds import seed_from_digest
from gpt_simple_core.records.source import MAX_LINE_BYTES, STDIN, InputDigest, read_records
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
    add_input_options(parser)
    add_output_options(parser)
    formats = parser.add_argument_group("formats (docs/openai-batch.md)")
    formats.add_argument(
        "--input-format",
        choices=("ours", "openai"),
        default="ours",
        help="input records: ours (docs/records.md, default) or an OpenAI Batch API file of "
        "/v1/completions requests",
    )
    formats.add_argument(
        "--output-format",
        choices=("ours", "openai"),
        default="ours",
        help="output lines: ours (docs/output.md, default) or the OpenAI Batch API's output "
        "(needs --input-format openai)",
    )
    formats.add_argument(
        "--model-map",
        metavar="FILE",
        help="with --input-format openai: a TOML or JSON file mapping request model names to "
        "checkpoints",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything and print the plan; load nothing (imports no torch)",
    )
    parser.add_argument(
        "--plan-format", choices=("text", "json"), default="text", help="dry-run output format"
    )
    scale = parser.add_argument_group("scaling out (docs/scaling-out.md)")
    scale.add_argument(
        "--shard",
        metavar="I/N",
        help="run shard I (0-based) of N, by model group; auto: from SLURM_ARRAY_TASK_ID/"
        "SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX/GPT_SIMPLE_SHARD_COUNT. With --dry-run: "
        "show every shard",
    )
    scale.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where groups run: this process (default), or a Ray cluster (one actor per group)",
    )
    scale.add_argument(
        "--ray-address",
        default="auto",
        metavar="ADDRESS",
        help="the Ray cluster for --executor ray: auto (default), HOST:PORT or ray://HOST:PORT",
    )
    add_model_options(parser, default_help="default model for records that name none")
    add_run_options(parser)
    add_sampling_options(parser)
    return parser


def plan_input(
    source: str,
    session: Session,
    *,
    sharded: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
    kind: str = GENERATE,
    openai: bool = False,
    model_map: ModelMap | None = None,
) -> tuple[Planned, InputDigest]:
    """Parse and plan ``source`` (a path, a FIFO or '-'), records of ``kind`` (with ``openai``:
    an OpenAI batch file whose model names ``model_map`` maps). Shards of one sweep run on
    different nodes and must agree on every derived seed: without a run seed, theirs comes from
    the input's content."""
    if openai:
        found = read_openai_records(source, model_map=model_map, max_line_bytes=max_line_bytes)
    else:
        found = read_records(source, max_line_bytes=max_line_bytes, kind=kind)
    records, problems, digest = found
    if sharded and session.settings.run_seed is None:
        session = session.with_run_seed(seed_from_digest(digest.sha256))
    return session.plan(records, problems, source=digest.name), digest


def _print_plan(planned: Planned, plan_format: str, shard: ShardSpec | None) -> None:
    plan = planned.plan
    if shard is not None and plan.ok:
        plan = attrs.evolve(plan, shards=tuple(assign(planned, shard.count).summary(planned)))
    if plan_format == "json":
        print(json.dumps(plan_to_json(plan), indent=2))
    else:
        sys.stdout.write(render_text(plan))


def _refuse(planned: Planned) -> int:
    report_problems(planned.plan)
    return EXIT_INVALID


def _executor(args: argparse.Namespace) -> Executor | None:
    if getattr(args, "executor", "local") != "ray":
        return None
    from gpt_simple_core.engine.ray_executor import RayExecutor, _import_ray

    _import_ray()  # says how to install it before anything is planned
    return RayExecutor(args.ray_address)


def _formats(args: argparse.Namespace) -> tuple[bool, ModelMap | None]:
    """(whether the input is an OpenAI batch file, its model map); refuses what does not go
    together."""
    openai = getattr(args, "input_format", "ours") == "openai"
    model_map = getattr(args, "model_map", None)
    if getattr(args, "output_format", "ours") == "openai" and not openai:
        raise ConfigError(
            "--output-format openai needs --input-format openai: each output line is keyed by "
            "its request's custom_id"
        )
    if model_map is not None and not openai:
        raise ConfigError("--model-map goes with --input-format openai")
    return openai, ModelMap.read(model_map) if model_map is not None else None


def _shape_for(digest: InputDigest) -> OpenAIOutput:
    return OpenAIOutput(digest.sha256)


def run(args: argparse.Namespace, registry: Registry) -> int:
    return run_sweep(args, registry, kind=GENERATE)


def run_sweep(args: argparse.Namespace, registry: Registry, *, kind: str) -> int:
    """A sweep of ``kind`` records (generate, or score for ``gpt-simple score``) from
    ``--input``: a dry-run, or a run into ``--output``."""
    settings = with_default_model(effective_settings(args))
    shard = parse_shard(args.shard) if getattr(args, "shard", None) else None
    openai, model_map = _formats(args)

    def plan(session: Session) -> tuple[Planned, InputDigest]:
        sharded, limit = shard is not None, args.max_line_bytes
        return plan_input(
            args.input,
            session,
            sharded=sharded,
            max_line_bytes=limit,
            kind=kind,
            openai=openai,
            model_map=model_map,
        )

    input_path = None if args.input == STDIN else Path(args.input)
    if args.dry_run:
        planned, _ = plan(Session(settings, registry))
        _print_plan(planned, args.plan_format, shard)
        if not planned.plan.ok:
            return _refuse(planned)
        check_output_for_dry_run(args, input_path)
        return EXIT_OK
    return run_command(
        args,
        settings,
        registry,
        plan,
        input_path=input_path,
        on_problems=_refuse,
        shard=shard,
        executor=_executor(args),
        shape_for=_shape_for if getattr(args, "output_format", "ours") == "openai" else None,
    )
