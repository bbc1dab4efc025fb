"""Property tests (hypothesis) of hostile input (issue 19): generated JSON lines, model configs
and safetensors headers never crash the planner or the checkpoint reader; every input line
is accounted for, as a record or as a problem; memory stays bounded.
"""

from __future__ import annotations

import json
import math
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_simple_core.errors import CheckpointError
from gpt_simple_core.records.parse import parse_lines
from tests.core.helpers import cli, read_jsonl
from tests.support.checkpoints import write_checkpoint
from tests.support.plugins import resolve_checkpoint
from tests.support.toy_backend import write_toy_checkpoint

#: More examples for a deeper search: GPT_SIMPLE_PROPERTY_EXAMPLES=2000 pytest this file.
PROPERTY = settings(
    derandomize=True,  # the same examples every run: CI stays deterministic
    max_examples=int(os.environ.get("GPT_SIMPLE_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = {
    "generation": ["max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "greedy"],
    "model": ["checkpoint", "dtype", "backend", "tokenizer"],
}


@st.composite
def record_lines(draw) -> str:
    """A line that looks like a record more often than not: real field names, hostile values;
    sometimes plain garbage, deep nesting or a repeated key."""
    kind = draw(st.sampled_from(["record", "record", "record", "value", "garbage", "deep", "dup"]))
    if kind == "value":
        return json.dumps(draw(json_values))
    if kind == "garbage":
        return draw(st.text(max_size=40)).replace("\n", " ").replace("\r", " ")
    if kind == "deep":
        depth = draw(st.integers(min_value=50, max_value=5000))
        return '{"prompt": "a", "x": ' + "[" * depth + "]" * depth + "}"
    if kind == "dup":
        return '{"prompt": "a", "prompt": "b"}'
    record: dict = {"prompt": draw(st.one_of(st.text(max_size=30), json_values))}
    for block, names in FIELDS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
            record[block] = {name: draw(json_values) for name in chosen}
            if block == "model" and draw(st.booleans()):
                record[block]["checkpoint"] = "toy"
    return json.dumps(record)


@pytest.fixture
def toy_model(tmp_path, toy):
    return write_toy_checkpoint(tmp_path / "toy")


@PROPERTY
@given(lines=st.lists(record_lines(), min_size=1, max_size=8))
def test_hostile_lines_are_records_or_problems_never_a_crash(tmp_path, capsys, toy_model, lines):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    numbers = {n for n, line in enumerate(lines, 1) if line.strip()}
    with source.open("rb") as f:  # lines end at b"\n" only, as the reader splits them
        records, problems = parse_lines(list(f))
    assert {r.line for r in records} | {p.line for p in problems} == numbers

    output = tmp_path / "out.jsonl"
    output.unlink(missing_ok=True)  # the examples share tmp_path
    argv = ["batch-generate", "--input", str(source), "--checkpoint", "toy"]
    argv += ["--max-new-tokens", "3", "--output", str(output), "--overwrite"]
    tracemalloc.start()
    try:
        code, _, err = cli(capsys, *argv)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code in (0, 1, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert peak < 200 << 20
    if code == 2:  # refused before loading: every problem listed, nothing written
        assert "nothing was loaded" in err
        assert not output.exists() or output.stat().st_size == 0
    else:  # one output line per input record, in input order
        assert len(read_jsonl(output)) == len(numbers)


config_overrides = st.dictionaries(
    st.sampled_from(
        ["n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "norm_eps", "rope_theta",
         "n_kv_head", "mlp_type", "norm", "tie_word_embeddings", "ffn_size", "extra"]
    ),
    json_values,
    max_size=3,
)  # fmt: skip


@PROPERTY
@given(overrides=config_overrides)
def test_hostile_configs_are_checkpoint_errors(tmp_path_factory, overrides):
    ckpt = _checkpoint(tmp_path_factory)
    config_file = ckpt / "model" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, **overrides}), encoding="utf-8")
    _resolves_or_refuses(ckpt)


@PROPERTY
@given(header=json_values, data=st.binary(max_size=64))
def test_hostile_safetensors_headers_are_checkpoint_errors(tmp_path_factory, header, data):
    ckpt = _checkpoint(tmp_path_factory)
    raw = json.dumps(header).encode()
    weights = ckpt / "model" / "model.safetensors"
    weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    _resolves_or_refuses(ckpt)


def _checkpoint(tmp_path_factory) -> Path:
    """A fresh copy of one small checkpoint (writing one per example would be slow)."""
    import shutil

    source = getattr(_checkpoint, "source", None)
    if source is None or not source.exists():
        source = write_checkpoint(tmp_path_factory.mktemp("pristine") / "c")
        _checkpoint.source = source  # type: ignore[attr-defined]
    copy = tmp_path_factory.mktemp("copy") / "c"
    shutil.copytree(source, copy)
    return copy


def _resolves_or_refuses(ckpt: Path) -> None:
    try:
        info = resolve_checkpoint(str(ckpt))
    except CheckpointError as exc:
        assert str(exc)
        return
    assert info.param_count >= 0 and not math.isnan(float(info.param_count))
