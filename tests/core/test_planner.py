"""The planner: groups in load order, what each says, grouping rules, JSON round trip, speed."""

from __future__ import annotations

import json
import time

import attrs
import pytest

from gpt_simple_core.plan.model import PLAN_VERSION, Plan, plan_from_json, plan_to_json
from gpt_simple_core.plan.planner import Planner
from gpt_simple_core.plan.render import render_text
from gpt_simple_core.records.parse import parse_lines, read_jsonl
from gpt_simple_core.records.seeds import derive_seed
from gpt_simple_core.settings import RunOptions, Settings
from tests.core.helpers import (
    PlanOnlyBackend,
    cli,
    register_backends,
    registry_of,
    word_tokenizer,
    write_jsonl,
)
from tests.support.checkpoints import small_config, write_checkpoint, write_run_dir, write_tokenizer
from tests.support.plugins import resolve_checkpoint

GROUP_KEYS = {
    "checkpoint",
    "selected_because",
    "backend",
    "dtype",
    "device",
    "tokenizer",
    "eos_id",
    "records",
    "token_budget",
    "weight_bytes",
    "warnings",
}


def make_plan(lines, settings: Settings | None = None, source: str = "in.jsonl"):
    records, problems = parse_lines([json.dumps(x) if isinstance(x, dict) else x for x in lines])
    planner = Planner(settings or Settings(), registry_of(PlanOnlyBackend()), source=source)
    return planner.plan(records, problems)


@pytest.fixture
def two_models(tmp_path):
    run = write_run_dir(tmp_path / "runA", {"checkpoint-10": 10, "checkpoint-20": 20})
    ckpt = write_checkpoint(tmp_path / "modelB", step=5)
    return run, ckpt


def record(path, dtype=None, max_new_tokens=5, **more):
    model = {"checkpoint": str(path)}
    if dtype:
        model["dtype"] = dtype
    return {
        "prompt": "The assert",
        "model": model,
        "generation": {"max_new_tokens": max_new_tokens},
    }


def test_groups_in_first_appearance_order_with_everything_the_plan_shows(two_models, tmp_path):
    run, ckpt_b = two_models
    chosen = run / "checkpoints" / "checkpoint-20"
    planned = make_plan(
        [
            record("runA", "fp32", 5),  # 1: relative run dir
            record(ckpt_b, None, 7),  # 2
            record(chosen, "float32", 11),  # 3: absolute path of the checkpoint picked in 1
            record(ckpt_b, "bf16", 13),  # 4
            record(ckpt_b, "bfloat16", 17),  # 5
            record("./runA/", "f32", 19),  # 6
        ]
    )
    plan = planned.plan
    assert plan.ok and plan.records == 6
    assert [g.checkpoint for g in plan.groups] == [str(chosen), str(ckpt_b), str(ckpt_b)]
    a, b_auto, b_bf16 = plan.groups
    assert [g.records for g in plan.groups] == [3, 1, 2]
    assert [g.first_line for g in plan.groups] == [1, 2, 4]
    assert [g.token_budget for g in plan.groups] == [5 + 11 + 19, 7, 13 + 17]
    assert [g.dtype for g in plan.groups] == ["fp32", "auto (resolved at load)", "bf16"]
    assert {g.device for g in plan.groups} == {"auto (resolved at load)"}
    assert a.step == 20 and "latest completed checkpoint" in a.selected_because
    assert b_auto.step == 5 and b_auto.selected_because is None
    assert {g.backend for g in plan.groups} == {"plan-only"}
    assert a.backend_selected_because.startswith("auto: highest-priority installed backend")
    assert a.tokenizer == str(run / "tokenizer")
    assert b_auto.tokenizer == str(ckpt_b / "tokenizer")
    assert {g.eos_id for g in plan.groups} == {0}
    params = resolve_checkpoint(str(ckpt_b)).param_count
    assert a.weight_bytes == params * 4
    assert b_auto.weight_bytes == params * 4  # auto is estimated at fp32
    assert b_bf16.weight_bytes == params * 2
    assert a.context_length == 128
    assert all(g.warnings == () for g in plan.groups)
    # the runnable groups hold the records in input order
    assert [[r.record.line for r in g.records] for g in planned.groups] == [[1, 3, 6], [2], [4, 5]]
    assert json.loads(json.dumps(plan_to_json(plan)))["groups"][0].keys() >= GROUP_KEYS


def test_device_and_dtype_defaults_come_from_settings(two_models):
    run, _ = two_models
    settings = Settings(run=RunOptions(device="cpu"))
    settings = attrs.evolve(settings, model=attrs.evolve(settings.model, dtype="fp16"))
    (group,) = make_plan([{"prompt": "x", "model": {"checkpoint": str(run)}}], settings).plan.groups
    assert group.device == "cpu" and group.dtype == "fp16"


def test_naming_the_backend_auto_would_pick_does_not_split_a_group(two_models):
    run, _ = two_models
    named = {"prompt": "x", "model": {"checkpoint": str(run), "backend": "plan-only"}}
    (group,) = make_plan([record(run), named]).plan.groups
    assert group.records == 2
    assert group.backend_selected_because.startswith("auto")  # the first record's reason


def test_default_model_and_its_tokenizer(two_models, tmp_path):
    run, ckpt_b = two_models
    write_tokenizer(tmp_path / "tok")
    settings = Settings()
    settings = attrs.evolve(
        settings, model=attrs.evolve(settings.model, checkpoint=str(run), tokenizer="tok")
    )
    planned = make_plan(
        [
            {"prompt": "uses the default model and tokenizer"},
            {"prompt": "own model: no default tokenizer", "model": {"checkpoint": str(ckpt_b)}},
            {"prompt": "default model, own dtype", "model": {"dtype": "fp16"}},
        ],
        settings,
    )
    groups = planned.plan.groups
    assert [(g.checkpoint, g.tokenizer, g.dtype) for g in groups] == [
        (str(run / "checkpoints" / "checkpoint-20"), str(tmp_path / "tok"), groups[0].dtype),
        (str(ckpt_b), str(ckpt_b / "tokenizer"), groups[1].dtype),
        (str(run / "checkpoints" / "checkpoint-20"), str(tmp_path / "tok"), "fp16"),
    ]


def test_different_tokenizers_make_different_groups(two_models, tmp_path):
    _, ckpt_b = two_models
    write_tokenizer(tmp_path / "tok")
    planned = make_plan(
        [
            {"prompt": "x", "model": {"checkpoint": str(ckpt_b)}},
            {"prompt": "x", "model": {"checkpoint": str(ckpt_b), "tokenizer": "tok"}},
            {
                "prompt": "x",
                "model": {"checkpoint": str(ckpt_b), "tokenizer": str(tmp_path / "tok")},
            },
        ]
    )
    assert [g.records for g in planned.plan.groups] == [1, 2]


def test_environment_variables_inside_records(two_models, tmp_path, monkeypatch):
    run, _ = two_models
    monkeypatch.setenv("RUNS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    planned = make_plan(
        [
            {"prompt": "x", "model": {"checkpoint": "$RUNS/runA"}},
            {"prompt": "x", "model": {"checkpoint": "${RUNS}/runA"}},
            {"prompt": "x", "model": {"output_dir": "~/runA"}},
            {"prompt": "x", "model": {"checkpoint": "$NOT_SET_ANYWHERE/runA"}},
            {"prompt": "x", "model": {"checkpoint": "$NOT_SET_ANYWHERE/runA"}},
        ]
    )
    (group,) = planned.plan.groups
    assert group.records == 3
    assert group.checkpoint == str(run / "checkpoints" / "checkpoint-20")
    (problem,) = planned.plan.problems
    assert (problem.line, problem.field) == (4, "model.checkpoint")
    assert "environment variable NOT_SET_ANYWHERE is not set" in problem.message
    assert problem.count == 2
    assert problem.render().endswith("(and 1 more record)")


def test_context_warnings_from_a_cheap_bound(two_models):
    run, _ = two_models
    info = resolve_checkpoint(str(run))
    longest = info.details["max_token_bytes"]
    assert longest >= 2
    will = "a" * (128 * longest)  # even at the longest token per byte it overflows
    may = "b" * 150  # at one byte per token it would overflow; at the longest it would not
    planned = make_plan(
        [
            record(run, max_new_tokens=10) | {"prompt": will},
            record(run, max_new_tokens=10) | {"prompt": may},
            record(run, max_new_tokens=10),
        ]
    )
    (group,) = planned.plan.groups
    (warning,) = group.warnings
    assert "1 record will run past the context of 128 tokens" in warning
    assert "1 more may" in warning
    assert "context policy" in warning


def test_tokenizer_without_eos_warns_in_the_plan(tmp_path):
    folder = word_tokenizer(tmp_path / "tok", ["a", "b"], [])
    ckpt = write_checkpoint(tmp_path / "c", small_config(3), tokenizer=False)
    (group,) = make_plan(
        [{"prompt": "a", "model": {"checkpoint": str(ckpt), "tokenizer": str(folder)}}]
    ).plan.groups
    assert group.eos_id is None
    assert any("no EOS token" in w for w in group.warnings)


def test_text_rendering(two_models):
    run, ckpt_b = two_models
    plan = make_plan(
        [record(run, "fp32"), record(ckpt_b), {"prompt": "x", "model": {"checkpoint": "nope"}}]
    ).plan
    text = render_text(plan)
    assert text.startswith("Plan for in.jsonl: 3 records in 2 groups ")
    assert f"[1] {run / 'checkpoints' / 'checkpoint-20'} (gpt-simple, step 20)" in text
    assert "    picked: latest completed checkpoint" in text
    assert "    backend: plan-only (auto: highest-priority" in text
    assert "    dtype: fp32; device: auto (resolved at load)" in text
    assert f"    tokenizer: {run / 'tokenizer'} (EOS id 0)" in text
    assert "    records: 1 (first on line 1); token budget 5; weights ~" in text
    assert "1 problem:" in text
    assert "in.jsonl:3: model.checkpoint: nope: no such file or directory" in text


# JSON round trip --------------------------------------------------------------------------
def test_plan_json_round_trips(two_models):
    run, ckpt_b = two_models
    plan = make_plan(
        [
            record(run, "fp32") | {"prompt": "a" * 2000},
            record(ckpt_b, "bf16"),
            {"prompt": "x", "model": {"checkpoint": "missing"}},
            "{bad",
        ]
    ).plan
    assert plan.groups[0].warnings and len(plan.problems) == 2
    data = plan_to_json(plan)
    assert plan_from_json(data) == plan
    through_text = json.loads(json.dumps(data))
    assert plan_from_json(through_text) == plan
    assert through_text["version"] == PLAN_VERSION
    assert set(through_text) >= {"version", "groups", "problems"}
    for group in through_text["groups"]:
        assert set(group) >= GROUP_KEYS
    assert plan_from_json(plan_to_json(Plan())) == Plan()


def test_dry_run_json_and_text(two_models, tmp_path, capsys):
    _, ckpt_b = two_models
    register_backends(PlanOnlyBackend())
    source = write_jsonl(tmp_path / "in.jsonl", [record("runA", "fp32"), record(ckpt_b)])
    code, out, err = cli(
        capsys, "batch-generate", "--input", str(source), "--dry-run", "--plan-format", "json"
    )
    assert code == 0
    data = json.loads(out)
    assert plan_from_json(data).groups[1].checkpoint == str(ckpt_b)
    assert [g["records"] for g in data["groups"]] == [1, 1]
    assert data["problems"] == []
    code, out, err = cli(capsys, "batch-generate", "--input", str(source), "--dry-run")
    assert code == 0
    assert out.startswith(f"Plan for {source}: 2 records in 2 groups ")
    # problems: plan on stdout, problems on stderr, exit 2
    write_jsonl(source, [record("runA", "fp32"), {"prompt": 3}])
    code, out, err = cli(
        capsys, "batch-generate", "--input", str(source), "--dry-run", "--plan-format", "json"
    )
    assert code == 2
    assert json.loads(out)["problems"][0]["line"] == 2
    assert f"{source}:2: prompt: must be a string" in err


def test_each_record_keeps_its_seed_or_derives_one_from_the_run_seed(two_models):
    """Blocks differing only by seed are resolved once; seeds stay per record."""
    run, _ = two_models
    lines = [record(run), record(run), record(run), record(run), record(run, max_new_tokens=9)]
    for line, seed in zip(lines, (5, None, 6, None, 7), strict=True):
        if seed is not None:
            line["generation"]["seed"] = seed
    settings = Settings(generation=attrs.evolve(Settings().generation, seed=123))
    (group,) = make_plan(lines, settings).groups
    params = [r.params for r in group.records]
    assert [p.seed for p in params] == [5, derive_seed(123, 1), 6, derive_seed(123, 3), 7]
    assert [p.max_new_tokens for p in params] == [5, 5, 5, 5, 9]
    assert len({attrs.evolve(p, seed=0) for p in params[:4]}) == 1


def test_missing_input_file(capsys):
    code, out, err = cli(capsys, "batch-generate", "--input", "nope.jsonl", "--dry-run")
    assert code == 2 and out == ""
    assert "input file nope.jsonl does not exist" in err


# Speed ------------------------------------------------------------------------------------
def test_100k_records_over_10_checkpoints_plan_in_seconds(tmp_path):
    paths = []
    for i in range(10):
        if i % 2:
            paths.append(str(write_run_dir(tmp_path / f"run{i}", {f"checkpoint-{i}": i})))
        else:
            paths.append(str(write_checkpoint(tmp_path / f"ckpt{i}", step=i)))
    lines = []
    for n in range(100_000):
        item = {
            "id": n,
            "prompt": f"Question {n}: what does the try statement do?",
            "model": {"checkpoint": paths[n % 10], "dtype": ("bf16", "bfloat16", "fp32")[n % 3]},
            "generation": {"max_new_tokens": 16 + n % 4, "temperature": 0.7},
        }
        if n % 7 == 0:
            item["generation"]["seed"] = n
        lines.append(json.dumps(item))
    source = tmp_path / "sweep.jsonl"
    source.write_text("\n".join(lines) + "\n")

    started = time.perf_counter()
    records, problems = read_jsonl(source)
    parsed = time.perf_counter()
    planner = Planner(Settings(), registry_of(PlanOnlyBackend()), source=str(source))
    planned = planner.plan(records, problems)
    planned_at = time.perf_counter()
    text = json.dumps(plan_to_json(planned.plan))
    render_text(planned.plan)
    finished = time.perf_counter()
    print(
        f"\n100k records / 10 checkpoints: parse {parsed - started:.2f} s, "
        f"plan {planned_at - parsed:.2f} s, render {finished - planned_at:.2f} s, "
        f"total {finished - started:.2f} s"
    )
    assert planned.plan.ok
    assert len(planned.plan.groups) == 20  # 10 checkpoints x (bf16, fp32)
    assert sum(g.records for g in planned.plan.groups) == 100_000
    assert len(text) < 100_000  # the plan summarises; it does not list records
    assert finished - started < 15
