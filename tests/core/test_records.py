"""Input records: strict structure, every problem of a file at once, dtype aliases, null rules."""

from __future__ import annotations

import json
import re

import pytest

from gpt_simple_core.records.parse import parse_lines
from gpt_simple_core.records.schema import GenerationSpec, ModelSpec
from tests.core.helpers import cli, write_jsonl


def parse(*objects, allow_blocks=True):
    return parse_lines([json.dumps(o) for o in objects], allow_blocks=allow_blocks)


def messages(problems):
    return [(p.line, p.field, p.message) for p in problems]


# One file, many structural errors ---------------------------------------------------------
BAD_FILE = [
    {"prompt": "fine", "idx": 1, "uid": "u", "prompt_id": 7},  # 1: extra keys pass
    '{"prompt": "unterminated',  # 2
    "[1, 2, 3]",  # 3
    {"id": "no-prompt"},  # 4
    {"prompt": 5},  # 5
    {"prompt": "x", "generation": {"temprature": 0.5}},  # 6
    {"prompt": "x", "model": {"dtyp": "fp16"}},  # 7
    {"prompt": "x", "genration": {"top_k": 5}},  # 8
    {"promt": "x"},  # 9
    {"prompt": "x", "completion": "y", "error": None, "meta": {}},  # 10
    {"prompt": "x", "generation": {"max_new_tokens": True}},  # 11
    {"prompt": "x", "generation": {"temperature": "5"}},  # 12
    {"prompt": "x", "generation": {"max_new_tokens": 0, "temperature": 0, "top_k": -1}},  # 13
    {"prompt": "x", "generation": {"top_p": 0, "min_p": 1, "repetition_penalty": 0}},  # 14
    {"prompt": "x", "generation": {"top_p": 1.5, "min_p": -0.1}},  # 15
    {"prompt": "x", "model": {"checkpoint": "a", "output_dir": "b"}},  # 16
    {"prompt": "x", "generation": {"greedy": True, "do_sample": True}},  # 17
    {"prompt": "x", "model": {"dtype": "fp16"}, "generation": {"dtype": "bf16"}},  # 18
    {"prompt": "x", "generation": {"temperature": None, "top_k": None}},  # 19
    {"prompt": "x", "model": {"dtype": "fp 8"}},  # 20: malformed (any well-formed name parses)
    {"prompt": "x", "model": None},  # 21
    {"prompt": "x", "generation": {"seed": None}},  # 22: a null seed is fine
    "",  # 23: blank lines are skipped
    {"prompt": "x", "generation": {"stop": ["ok", 3], "stop_token_ids": [1, True]}},  # 24
]

EXPECTED = [
    (2, "", "invalid JSON"),
    (3, "", "each line must be a JSON object, got list"),
    (4, "prompt", "is required"),
    (5, "prompt", "must be a string"),
    (6, "generation.temprature", "unknown key (did you mean 'temperature'?)"),
    (7, "model.dtyp", "unknown key (did you mean 'dtype'?)"),
    (8, "genration", "unknown key (did you mean 'generation'?)"),
    (9, "promt", "unknown key (did you mean 'prompt'?)"),
    (9, "prompt", "is required"),
    (10, "completion", "is an output key and cannot appear in input"),
    (10, "error", "is an output key"),
    (10, "meta", "is an output key"),
    (11, "generation.max_new_tokens", "must be an integer, got true"),
    (12, "generation.temperature", "must be a number, got the string '5'"),
    (13, "generation.max_new_tokens", "must be >= 1, got 0"),
    (13, "generation.temperature", "must be > 0, got 0"),
    (13, "generation.top_k", "must be >= 0 (0 disables), got -1"),
    (14, "generation.top_p", "must be in (0, 1], got 0"),
    (14, "generation.min_p", "must be in [0, 1), got 1"),
    (14, "generation.repetition_penalty", "must be > 0, got 0"),
    (15, "generation.top_p", "must be in (0, 1], got 1.5"),
    (15, "generation.min_p", "must be in [0, 1), got -0.1"),
    (16, "model.output_dir", "give checkpoint or output_dir, not both"),
    (17, "generation.do_sample", "contradicts greedy=true"),
    (18, "generation.dtype", "bf16 conflicts with model.dtype fp16"),
    (19, "generation.temperature", "must not be null"),
    (19, "generation.top_k", "must not be null (use 0 to disable top-k)"),
    (20, "model.dtype", "malformed dtype 'fp 8'"),
    (21, "model", "must be an object, got null"),
    (24, "generation.stop", "must be a string or a list of strings; item 1 is 3"),
    (24, "generation.stop_token_ids", "must be a list of integers; item 1 is true"),
]


def test_every_problem_of_a_file_is_reported_with_its_line(tmp_path, toy_ckpt, toy, capsys):
    source = write_jsonl(tmp_path / "bad.jsonl", BAD_FILE)
    code, out, err = cli(capsys, "batch-generate", "--input", str(source), "--checkpoint", "toy")
    assert code == 2
    assert out == ""
    assert toy.loaded == []  # nothing loaded
    lines = err.splitlines()
    assert " problems in " in lines[0] and "nothing was loaded" in lines[0]
    reported = lines[1:]
    for line, field, message in EXPECTED:
        where = f"{source}:{line}: {field}: " if field else f"{source}:{line}: "
        hits = [r for r in reported if r.startswith(where) and message in r]
        assert hits, f"missing {where}{message!r} in:\n" + "\n".join(reported)
    assert not [r for r in reported if re.match(rf"{re.escape(str(source))}:(1|22|23):", r)]
    assert len(reported) == len(EXPECTED)
    assert "Traceback" not in err
    distinct = {(field, message.split(",")[0]) for _, field, message in EXPECTED}
    assert len(distinct) >= 10


def test_valid_lines_of_a_bad_file_still_parse():
    records, problems = parse_lines([json.dumps(r) if isinstance(r, dict) else r for r in BAD_FILE])
    assert [r.line for r in records] == [1, 22]
    assert [r.index for r in records] == [0, 1]
    assert len(problems) == len(EXPECTED)


def test_no_model_anywhere_means_the_embedded_model(tmp_path, toy, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    code, _, err = cli(capsys, "batch-generate", "--input", str(source), "--dry-run")
    assert "no model given: records naming none use the embedded one" in err
    assert "builtin:default" in err
    assert code == 2  # no backend for gpt-simple checkpoints in this test environment
    assert f"{source}:1: model.backend: no installed backend runs gpt-simple" in err


# Types, ranges and nulls, one at a time ---------------------------------------------------
@pytest.mark.parametrize(
    ("generation", "field", "message"),
    [
        ({"top_k": 1.0}, "top_k", "must be an integer, got 1.0"),
        ({"top_k": False}, "top_k", "must be an integer, got false"),
        ({"temperature": True}, "temperature", "must be a number, got true"),
        ({"greedy": 1}, "greedy", "must be true or false, got 1"),
        ({"ignore_eos": "yes"}, "ignore_eos", "must be true or false"),
        ({"seed": -1}, "seed", "must be in [0, 2**64)"),
        ({"seed": 2**64}, "seed", "must be in [0, 2**64)"),
        ({"stop": ""}, "stop", "must not be empty"),
        ({"stop_token_ids": [-1]}, "stop_token_ids", "must be >= 0"),
        ({"stop_token_ids": 5}, "stop_token_ids", "must be a list of integers, got 5"),
        ({"top_p": None}, "top_p", "use 1.0 to disable top-p"),
        ({"min_p": None}, "min_p", "use 0 to disable min-p"),
        ({"max_new_tokens": None}, "max_new_tokens", "omit the key to use the default"),
        ({"return_full_text": None}, "return_full_text", "must not be null"),
    ],
)
def test_generation_values_are_checked(generation, field, message):
    records, problems = parse({"prompt": "p", "generation": generation})
    assert records == []
    assert len(problems) == 1
    assert problems[0].field == f"generation.{field}"
    assert message in problems[0].message


@pytest.mark.parametrize(
    "generation",
    [
        {"max_new_tokens": 1, "temperature": 1e-6, "top_k": 0, "top_p": 1, "min_p": 0},
        {"top_p": 1e-9, "min_p": 0.999, "repetition_penalty": 1e-3},
        {"temperature": 2, "repetition_penalty": 3},  # integers are numbers
        {"seed": 0},
        {"seed": 2**64 - 1},
        {"seed": None},
        {"stop": "one string"},
        {"stop": ["a", "b"], "stop_token_ids": [0, 5], "ignore_eos": True},
        {"greedy": True, "do_sample": False},
    ],
)
def test_boundary_values_pass(generation):
    records, problems = parse({"prompt": "p", "generation": generation})
    assert problems == []
    assert len(records) == 1


def test_stop_string_becomes_a_tuple_and_do_sample_folds_into_greedy():
    (record,), _ = parse({"prompt": "p", "generation": {"stop": "\n", "do_sample": False}})
    assert record.generation.stop == ("\n",)
    assert record.generation.greedy is True
    assert record.generation.do_sample is None
    (record,), _ = parse({"prompt": "p", "generation": {"do_sample": True}})
    assert record.generation.greedy is False


def test_model_null_fields_are_refused_and_unknown_model_keys_suggest():
    _, problems = parse({"prompt": "p", "model": {"checkpoint": None, "bakend": "toy"}})
    assert messages(problems) == [
        (1, "model.checkpoint", "must not be null (omit the key to use the default)"),
        (1, "model.bakend", "unknown key (did you mean 'backend'?)"),
    ]


def test_unknown_key_without_a_close_match_has_no_suggestion():
    _, problems = parse({"prompt": "p", "generation": {"zzzz": 1}})
    assert messages(problems) == [(1, "generation.zzzz", "unknown key")]


def test_block_problems_are_not_hidden_by_the_cache():
    """Sweeps repeat blocks; a cached good block must not hide a bad one, nor True share 1."""
    good = {"prompt": "p", "generation": {"max_new_tokens": 1}}
    bad = {"prompt": "p", "generation": {"max_new_tokens": True}}
    records, problems = parse(good, bad, good, bad)
    assert [r.line for r in records] == [1, 3]
    assert [p.line for p in problems] == [2, 4]


def test_per_record_seeds_share_the_rest_of_the_block_and_keep_their_own_checks():
    """The cache shares a generation block without its seed: each record keeps its own seed
    (``Record.seed``), and a bad seed is reported as if nothing were cached."""
    base = {"max_new_tokens": 3, "top_k": 5}
    lines = [{"prompt": "p", "generation": {**base, "seed": seed}} for seed in (7, 8, 0)]
    lines += [
        {"prompt": "p", "generation": {**base, "seed": -1}},
        {"prompt": "p", "generation": {**base, "seed": True}},
        {"prompt": "p", "generation": {**base, "seed": 1.5}},
        {"prompt": "p", "generation": {**base, "seed": None}},
        {"prompt": "p", "generation": {"max_new_tokens": 0, "seed": 9}},
        {"prompt": "p", "generation": {"max_new_tokens": 0, "seed": 10}},
    ]
    records, problems = parse(*lines)
    assert [(r.line, r.seed) for r in records] == [(1, 7), (2, 8), (3, 0), (7, None)]
    assert all(r.generation.top_k == 5 and r.generation.max_new_tokens == 3 for r in records)
    assert len({id(r.generation) for r in records}) == 1  # one shared block
    assert messages(problems) == [
        (4, "generation.seed", "must be in [0, 2**64), got -1"),
        (5, "generation.seed", "must be an integer, got true"),
        (6, "generation.seed", "must be an integer, got 1.5"),
        (8, "generation.max_new_tokens", "must be >= 1, got 0"),
        (9, "generation.max_new_tokens", "must be >= 1, got 0"),
    ]


# Top-level keys -------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["idx", "uid", "prompt_id", "id", "source", "models2x", "prom"])
def test_ordinary_extra_keys_pass(key):
    records, problems = parse({"prompt": "p", key: 1})
    assert problems == [] and len(records) == 1


@pytest.mark.parametrize(
    ("obj", "key", "known"),
    [
        ({"prompt": "p", "genration": {}}, "genration", "generation"),
        ({"prompt": "p", "generatoin": {}}, "generatoin", "generation"),
        ({"promt": "p", "prompt": "p"}, None, None),  # prompt present: promt is an extra key
        ({"prompt": "p", "modle": {}}, "modle", "model"),
        ({"prompt": "p", "model": {}, "modle": 1}, None, None),
        ({"prompt": "p", "modl": {}}, None, None),  # 4 characters: an ordinary extra key
    ],
)
def test_top_level_typos(obj, key, known):
    _, problems = parse(obj)
    if key is None:
        assert problems == []
    else:
        assert messages(problems) == [(1, key, f"unknown key (did you mean {known!r}?)")]


def test_extra_top_level_keys_are_kept_in_order():
    obj = {"zeta": 1, "prompt": "p", "alpha": [1, {"b": None}], "generation": {}, "id": "x"}
    (record,), _ = parse(obj)
    assert list(record.raw) == ["zeta", "prompt", "alpha", "generation", "id"]
    assert record.raw["alpha"] == [1, {"b": None}]


def test_generate_mode_refuses_model_and_generation_blocks():
    _, problems = parse({"prompt": "p", "model": {}, "generation": {}}, allow_blocks=False)
    assert [p.field for p in problems] == ["model", "generation"]
    assert all("gpt-simple batch-generate" in p.message for p in problems)


# dtype aliases ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("fp32", "fp32"),
        ("float32", "fp32"),
        ("f32", "fp32"),
        ("FP32", "fp32"),
        ("fp16", "fp16"),
        ("float16", "fp16"),
        ("half", "fp16"),
        ("bf16", "bf16"),
        ("bfloat16", "bf16"),
        ("BFloat16", "bf16"),
        ("auto", "auto"),
    ],
)
def test_dtype_aliases_normalise(alias, canonical):
    (a, b), problems = parse(
        {"prompt": "p", "model": {"dtype": alias}},
        {"prompt": "p", "generation": {"dtype": alias}},
    )
    assert problems == []
    assert a.model.dtype == canonical
    assert b.model.dtype == canonical  # generation.dtype means the model dtype
    assert b.generation.dtype is None
    assert ModelSpec(dtype=alias).dtype == canonical


def test_generation_dtype_agreeing_with_model_dtype_through_aliases_is_fine():
    (record,), problems = parse(
        {"prompt": "p", "model": {"dtype": "bfloat16"}, "generation": {"dtype": "bf16"}}
    )
    assert problems == []
    assert record.model.dtype == "bf16"


def test_generation_spec_contradictions_only_when_both_given():
    assert GenerationSpec(greedy=True).contradictions() == []
    assert GenerationSpec(greedy=False, do_sample=True).contradictions() == []
    assert GenerationSpec(greedy=False, do_sample=False).contradictions()
