"""Sharding a sweep by model and merging it back (issue 13): identical to one run, each model
loaded by one shard, the same assignment everywhere, and a merge that names what is wrong."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.jobs.shards import ShardSpec, _balanced_chunks, parse_shard
from tests.core.helpers import run_toy_cli, write_jsonl
from tests.support.toy_backend import write_toy_checkpoint

SEED = ("--seed", "3")


def mixed_sweep(folder: Path, sizes: dict[str, int]) -> Path:
    """Records over toy models (``sizes``: model -> records), interleaved, greedy and seeded."""
    for name in sizes:
        write_toy_checkpoint(folder / name, script=name * 3)
    queues = {name: count for name, count in sizes.items()}
    names = []  # round robin: a, b, c, a, b, c, ... until each model has its records
    while any(queues.values()):
        for name in sizes:
            if queues[name]:
                names.append(name)
                queues[name] -= 1
    records = []
    for i, name in enumerate(names):
        generation = {"max_new_tokens": 2 + i % 4, **({"greedy": True} if i % 2 else {})}
        model = {"checkpoint": name}
        records.append({"id": i, "prompt": "ab", "model": model, "generation": generation})
    return write_jsonl(folder / "sweep.jsonl", records)


def batch(folder: Path, *argv: str):
    return run_toy_cli(["batch-generate", "--input", "sweep.jsonl", *SEED, *argv], cwd=folder)


def loads(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if "] loading " in line]
    return [line.split("checkpoint=")[1].split()[0] for line in lines]


def merge(folder: Path, *outputs: str, output: str = "merged.jsonl"):
    argv = ["merge", *outputs, "--input", "sweep.jsonl", "--output", output]
    return run_toy_cli(argv, cwd=folder)


@pytest.fixture
def three_models(tmp_path: Path) -> Path:
    mixed_sweep(tmp_path, {"a": 12, "b": 9, "c": 6})
    whole = batch(tmp_path, "--output", "whole.jsonl")
    assert whole.returncode == 0, whole.stderr
    return tmp_path


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_merge_to_the_unsharded_output(three_models: Path, count: int):
    folder = three_models
    loaded = []
    for index in range(count):
        result = batch(folder, "--output", f"s{index}.jsonl", "--shard", f"{index}/{count}")
        assert result.returncode == 0, result.stderr
        loaded += loads(result.stderr)
    # three groups: whole groups, one load each, unless a group is split (none is here)
    assert sorted(loaded) == sorted(str(folder / n) for n in "abc")
    outputs = [f"s{i}.jsonl" for i in range(count)]
    merged = merge(folder, *outputs)
    assert merged.returncode == 0, merged.stderr
    assert (folder / "merged.jsonl").read_bytes() == (folder / "whole.jsonl").read_bytes()


def test_a_group_larger_than_a_fair_share_is_split_and_the_plan_says_so(tmp_path: Path):
    mixed_sweep(tmp_path, {"big": 240, "small": 4})  # big: decoding dominates its load
    plan = batch(tmp_path, "--dry-run", "--shard", "0/3")
    assert plan.returncode == 0, plan.stderr
    assert "part 1/3 (the group is split)" in plan.stdout
    as_json = json.loads(
        batch(tmp_path, "--dry-run", "--shard", "0/3", "--plan-format", "json").stdout
    )
    parts = [
        g["part"] for s in as_json["shards"] for g in s["groups"] if g["checkpoint"].endswith("big")
    ]
    assert sorted(parts) == ["1/3", "2/3", "3/3"]
    assert batch(tmp_path, "--output", "whole.jsonl").returncode == 0
    loaded = []
    for index in range(3):
        result = batch(tmp_path, "--output", f"s{index}.jsonl", "--shard", f"{index}/3")
        assert result.returncode == 0, result.stderr
        loaded += loads(result.stderr)
    assert loaded.count(str(tmp_path / "big")) == 3  # split: one load per part, as planned
    assert merge(tmp_path, "s0.jsonl", "s1.jsonl", "s2.jsonl", output="m.jsonl").returncode == 0
    assert (tmp_path / "m.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_the_assignment_is_the_same_whatever_the_hash_seed(three_models: Path):
    plans = []
    for hash_seed in ("0", "1", "12345"):
        argv = ["batch-generate", "--input", "sweep.jsonl", "--dry-run", "--shard", "0/2"]
        result = run_toy_cli(
            [*argv, "--plan-format", "json"], cwd=three_models, PYTHONHASHSEED=hash_seed
        )
        assert result.returncode == 0, result.stderr
        plans.append(json.loads(result.stdout)["shards"])
    assert plans[0] == plans[1] == plans[2]


def test_merge_names_missing_duplicated_and_unfinished_shards(three_models: Path):
    folder = three_models
    for index in range(3):
        assert batch(folder, "--output", f"s{index}.jsonl", "--shard", f"{index}/3").returncode == 0

    def merge_into_m(*outputs: str):
        return merge(folder, *outputs, output="m.jsonl")

    missing = merge_into_m("s0.jsonl", "s2.jsonl")
    assert missing.returncode == 2 and "shard 1/3 is missing" in missing.stderr
    twice = merge_into_m("s0.jsonl", "s1.jsonl", "s1.jsonl", "s2.jsonl")
    assert twice.returncode == 2 and "shard 1/3 is given twice" in twice.stderr
    lines = (folder / "s1.jsonl").read_text().splitlines(keepends=True)
    (folder / "s1.jsonl").write_text("".join(lines[:-1]))  # an unfinished shard's output
    manifest = folder / "s1.jsonl.gpt-simple" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "status": "stopped", "written": len(lines) - 1}))
    unfinished = merge_into_m("s0.jsonl", "s1.jsonl", "s2.jsonl")
    assert unfinished.returncode == 2 and "did not finish (stopped" in unfinished.stderr
    assert not (folder / "m.jsonl").exists()
    (folder / "sweep.jsonl").write_text((folder / "sweep.jsonl").read_text() + "\n\n")
    other = merge_into_m("s0.jsonl", "s2.jsonl")
    assert "was run on another input" in other.stderr


def test_a_record_missing_from_every_shard_is_named_by_its_id(three_models: Path):
    folder = three_models
    for index in range(2):
        assert batch(folder, "--output", f"s{index}.jsonl", "--shard", f"{index}/2").returncode == 0
    lines = (folder / "s0.jsonl").read_text().splitlines(keepends=True)
    (folder / "s0.jsonl").write_text("".join(lines[:-2]))  # as if it lost its last records
    merged = merge(folder, "s0.jsonl", "s1.jsonl", output="m.jsonl")
    assert merged.returncode == 2
    assert "2 records missing: line" in merged.stderr and "(id " in merged.stderr


def test_shard_specs():
    assert parse_shard("2/5") == ShardSpec(2, 5)
    slurm = {
        "SLURM_ARRAY_TASK_ID": "12",
        "SLURM_ARRAY_TASK_MIN": "10",
        "SLURM_ARRAY_TASK_COUNT": "4",
    }
    assert parse_shard("auto", slurm) == ShardSpec(2, 4)
    k8s = {"JOB_COMPLETION_INDEX": "3", "GPT_SIMPLE_SHARD_COUNT": "4"}
    assert parse_shard("auto", k8s) == ShardSpec(3, 4)
    for bad in ("5/5", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    with pytest.raises(ConfigError, match="GPT_SIMPLE_SHARD_COUNT"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "0"})
    with pytest.raises(ConfigError, match="neither a Slurm array task"):
        parse_shard("auto", {})


def test_balanced_chunks_cover_everything_once():
    for tokens in ([5] * 10, [1, 100, 1, 1, 1], [3], list(range(1, 30))):
        for parts in range(1, len(tokens) + 1):
            chunks = _balanced_chunks(tokens, parts)
            assert chunks[0][0] == 0 and chunks[-1][1] == len(tokens)
            assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
            assert len(chunks) <= parts and all(end > start for start, end in chunks)
