"""OpenAI Batch API files: ``--input-format openai`` and ``--output-format openai``
(docs/openai-batch.md), through the toy backend."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.output.openai import completion_logprobs, openai_line, request_ids
from gpt_simple_core.records.openai import ModelMap
from tests.support.cli import cli, read_jsonl, write_jsonl
from tests.support.toy_backend import write_toy_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openai"
BATCH = FIXTURES / "batch.jsonl"
MAP_TOML = FIXTURES / "model_map.toml"
MAP_JSON = FIXTURES / "model_map.json"
OPENAI = ("--input-format", "openai", "--model-map", str(MAP_TOML))
#: The fixture's requests as our own records (what the translation must amount to).
OURS = [
    {
        "prompt": "the assert statement",
        "model": {"checkpoint": "toy"},
        "generation": {"max_new_tokens": 8, "greedy": True},
    },
    {
        "prompt": "hello there",
        "model": {"checkpoint": "toy-scripted", "dtype": "fp32"},
        "generation": {"max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "seed": 7},
    },
    {
        "prompt": "one prompt in a list",
        "model": {"checkpoint": "toy"},
        "generation": {"max_new_tokens": 16, "stop": ["e"], "seed": 3},
    },
    {
        "prompt": "why",
        "model": {"checkpoint": "toy-scripted", "dtype": "fp32"},
        "generation": {"max_new_tokens": 4, "greedy": True},
    },
]


@pytest.fixture
def checkpoints(tmp_path: Path, toy) -> Path:
    """The two checkpoints the fixture's model map names (relative to the working folder)."""
    write_toy_checkpoint(tmp_path / "toy")
    write_toy_checkpoint(tmp_path / "toy-scripted", script="hello world ", script_bonus=4.0)
    return tmp_path


def batch(capsys, *flags: str) -> tuple[int, str, str]:
    return cli(capsys, "batch-generate", *flags)


def request(custom_id: str = "r", **body) -> dict:
    body = {"model": "toy", "prompt": "a", **body}  # a path: needs no model map
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}


def problems_of(capsys, tmp_path: Path, lines: list, *flags: str) -> list[str]:
    """The problems a dry-run reports for ``lines`` (as ``in.jsonl:LINE: ...``); exit 2."""
    write_jsonl(tmp_path / "in.jsonl", lines)
    code, _, err = batch(capsys, "--input", "in.jsonl", "--input-format", "openai", "--dry-run")
    assert code == 2, err
    return [line for line in err.splitlines() if line.startswith("in.jsonl:")]


# Round trip ------------------------------------------------------------------------------------
def test_fixture_round_trips_in_order_with_our_formats_completions(capsys, checkpoints):
    out = checkpoints / "out.jsonl"
    code, stdout, err = batch(
        capsys, "--input", str(BATCH), *OPENAI, "--output-format", "openai", "--output", str(out)
    )
    assert (code, stdout) == (0, ""), err
    lines = read_jsonl(out)
    assert [line["custom_id"] for line in lines] == ["req-1", "req-2", "req-3", "req-4"]

    code, _, err = batch(
        capsys,
        "--input",
        str(write_jsonl(checkpoints / "ours.jsonl", OURS)),
        "--output",
        str(checkpoints / "ours-out.jsonl"),
    )
    assert code == 0, err
    ours = read_jsonl(checkpoints / "ours-out.jsonl")
    sha = hashlib.sha256(BATCH.read_bytes()).hexdigest()
    for line, record in zip(lines, ours, strict=True):
        ids = request_ids(sha, line["custom_id"])
        assert line["id"] == ids["id"] and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"] == ids["request_id"]
        body = response["body"]
        assert body["id"] == ids["completion_id"] and body["object"] == "text_completion"
        assert body["created"] == 0
        [choice] = body["choices"]
        assert choice["text"] == record["completion"] and choice["index"] == 0
        assert choice["logprobs"] is None
        expected = "length" if record["meta"]["finish_reason"] == "length" else "stop"
        assert choice["finish_reason"] == expected
        meta = record["meta"]
        assert body["usage"] == {
            "prompt_tokens": meta["prompt_tokens"],
            "completion_tokens": meta["completion_tokens"],
            "total_tokens": meta["prompt_tokens"] + meta["completion_tokens"],
        }
    assert [line["response"]["body"]["model"] for line in lines] == [
        "toy-small",
        "toy-big",
        "toy-small",
        "toy-big",
    ]
    assert ours[2]["completion"] == lines[2]["response"]["body"]["choices"][0]["text"]


def test_openai_input_with_our_output_keeps_custom_id_and_the_model_name(capsys, checkpoints):
    out = checkpoints / "out.jsonl"
    code, _, err = batch(
        capsys,
        "--input",
        str(BATCH),
        "--input-format",
        "openai",
        "--model-map",
        str(MAP_JSON),
        "--output",
        str(out),
    )
    assert code == 0, err
    records = read_jsonl(out)
    assert [r["custom_id"] for r in records] == ["req-1", "req-2", "req-3", "req-4"]
    assert records[1]["openai_model"] == "toy-big"
    assert records[1]["model"] == {"checkpoint": "toy-scripted", "dtype": "fp32"}
    assert records[0]["generation"]["greedy"] is True
    assert records[2]["generation"]["max_new_tokens"] == 16  # OpenAI's default max_tokens
    assert records[2]["generation"]["stop"] == ["e"]


def test_two_runs_write_identical_bytes_and_resume_keeps_the_finished_lines(capsys, checkpoints):
    flags = ("--input", str(BATCH), *OPENAI, "--output-format", "openai", "--seed", "5")
    first, second = checkpoints / "a.jsonl", checkpoints / "b.jsonl"
    assert batch(capsys, *flags, "--output", str(first))[0] == 0
    assert batch(capsys, *flags, "--output", str(second))[0] == 0
    assert first.read_bytes() == second.read_bytes()

    full = first.read_bytes()
    first.write_bytes(b"".join(full.splitlines(keepends=True)[:2]))  # killed after two lines
    code, _, err = batch(capsys, *flags, "--output", str(first), "--resume")
    assert code == 0, err
    assert "kept=2" in err  # the two lines were recognised, not run again
    assert first.read_bytes() == full


def test_dry_run_shows_the_plan(capsys, checkpoints):
    code, out, err = batch(capsys, "--input", str(BATCH), *OPENAI, "--dry-run")
    assert code == 0, err
    assert out.startswith(f"Plan for {BATCH}: 4 records in 2 groups")
    assert "toy-scripted" in out


def test_a_failed_record_has_openai_s_error_shape(capsys, tmp_path, toy):
    write_toy_checkpoint(tmp_path / "bad", poison="z")
    greedy = {"model": "bad", "temperature": 0, "max_tokens": 3}  # never samples the poison
    lines = [request("ok", prompt="abc", **greedy), request("boom", prompt="zzz", **greedy)]
    write_jsonl(tmp_path / "in.jsonl", lines)
    code, _, err = batch(
        capsys,
        "--input",
        "in.jsonl",
        "--input-format",
        "openai",
        "--output-format",
        "openai",
        "--output",
        "out.jsonl",
    )
    assert code == 1, err
    ok, boom = read_jsonl(tmp_path / "out.jsonl")
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    assert set(boom) == {"id", "custom_id", "response", "error"}
    assert boom["custom_id"] == "boom" and boom["response"] is None
    # our record's error {"type", "message"} becomes OpenAI's {"code", "message"}
    assert boom["error"]["code"] == "RuntimeError"
    assert boom["error"]["message"].startswith("poisoned row")


# Problems, with file:line --------------------------------------------------------------------
def test_every_problem_names_its_line(capsys, tmp_path, toy):
    write_toy_checkpoint(tmp_path / "toy")
    lines = [
        request("a"),
        request("b", echo=True, colour="red"),
        {**request("c"), "url": "/v1/chat/completions"},
        request("d", n=0),
        {k: v for k, v in request().items() if k != "custom_id"},
        request("a"),
        request("e", model="gpt-3.5-turbo-instruct"),
        request("f", prompt=["one", "two"]),
        {**request("g"), "method": "GET", "extra": 1},
        request("h", max_tokens=0, temperature=-1),
    ]
    problems = problems_of(capsys, tmp_path, lines)
    expected = [
        "in.jsonl:2: body.echo: is not supported by gpt-simple",
        "in.jsonl:2: body.colour: unknown key",
        "in.jsonl:3: url: /v1/chat/completions needs a chat template",
        "in.jsonl:4: body.n: must be in 1..128",
        "in.jsonl:5: custom_id: is required",
        "in.jsonl:6: custom_id: 'a' repeats the custom_id of line 1",
        "in.jsonl:7: body.model: 'gpt-3.5-turbo-instruct' is not in a --model-map",
        "in.jsonl:8: body.prompt: 2 prompts in one request: one prompt per request line",
        "in.jsonl:9: extra: unknown key",
        "in.jsonl:9: method: must be POST",
        "in.jsonl:10: body.max_tokens: must be >= 1",
        "in.jsonl:10: body.temperature: must be > 0",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert not any(p.startswith("in.jsonl:1:") for p in problems)
    assert "use /v1/completions with a plain prompt" in "\n".join(problems)


def test_an_unmapped_model_names_the_map(capsys, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [request("a", model="davinci")])
    code, _, err = batch(capsys, "--input", "in.jsonl", *OPENAI, "--dry-run")
    assert code == 2
    assert f"in.jsonl:1: body.model: 'davinci' is not in the model map {MAP_TOML}" in err


def test_model_map_entries_are_checked_when_read(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"m": {"checkpoint": "x", "dtpye": "fp32"}}))
    with pytest.raises(ConfigError, match=r"m\.dtpye: unknown key"):
        ModelMap.read(tmp_path / "map.json")
    (tmp_path / "map.toml").write_text("m = 3\n")
    with pytest.raises(ConfigError, match=r"map\.toml"):
        ModelMap.read(tmp_path / "map.toml")
    assert ModelMap.read(MAP_JSON).entries == ModelMap.read(MAP_TOML).entries


def test_output_format_openai_needs_openai_input(capsys, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    code, _, err = batch(capsys, "--input", "in.jsonl", "--output-format", "openai", "--dry-run")
    assert code == 2
    assert "--output-format openai needs --input-format openai" in err


# The output converter, on hand-made records ----------------------------------------------------
def test_logprobs_convert_to_openai_s_completions_shape():
    entries = [
        {
            "token": 3,
            "text": "He",
            "logprob": -0.5,
            "top": [
                {"token": 3, "text": "He", "logprob": -0.5},
                {"token": 9, "text": "She", "logprob": -1.5},
            ],
        },
        {
            "token": 4,
            "text": "llo",
            "logprob": -0.25,
            "top": [{"token": 4, "text": "llo", "logprob": -0.25}],
        },
    ]
    assert completion_logprobs(entries) == {
        "tokens": ["He", "llo"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"He": -0.5, "She": -1.5}, {"llo": -0.25}],
        "text_offset": [0, 2],
    }
    record = {
        "custom_id": "x",
        "openai_model": "m",
        "prompt": "Say: ",
        "completion": "Say: Hello",
        "generation": {"return_full_text": True},
        "logprobs": entries,
        "meta": {"prompt_tokens": 2, "completion_tokens": 2, "finish_reason": "eos"},
    }
    [choice] = openai_line(record, "0" * 64)["response"]["body"]["choices"]
    assert choice["logprobs"]["text_offset"] == [5, 7]  # after the prompt, which is echoed
    assert choice["finish_reason"] == "stop"


def test_a_failed_record_converts_to_an_error_line():
    record = {
        "custom_id": "x",
        "prompt": "p",
        "error": {"type": "GenerationError", "message": "too long"},
        "generation": {},
        "meta": {"checkpoint": "/c", "backend": "toy"},
    }
    line = openai_line(record, "ab" * 32)
    assert line == {
        "id": request_ids("ab" * 32, "x")["id"],
        "custom_id": "x",
        "response": None,
        "error": {"code": "GenerationError", "message": "too long"},
    }
    assert line["id"].startswith("batch_req_") and line["id"] != request_ids("cd" * 32, "x")["id"]


def test_stdout_gets_the_same_lines_as_a_file(capsys, checkpoints):
    flags = ("--input", str(BATCH), *OPENAI, "--output-format", "openai", "--seed", "5")
    assert batch(capsys, *flags, "--output", "out.jsonl")[0] == 0
    code, out, err = batch(capsys, *flags)
    assert code == 0, err
    assert out == (checkpoints / "out.jsonl").read_text(encoding="utf-8")


def test_n_samples_become_choices(capsys, tmp_path, toy):
    write_toy_checkpoint(tmp_path / "toy")
    line = request("s", n=3, seed=4, logprobs=1, max_tokens=3)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(line) + "\n")
    output = tmp_path / "out.jsonl"
    code, _, err = cli(capsys, "batch-generate", "--input", str(source), "--input-format",
                       "openai", "--output-format", "openai", "--output", str(output))  # fmt: skip
    assert code == 0, err
    (out,) = [json.loads(x) for x in output.read_text().splitlines()]
    choices = out["response"]["body"]["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert all(1 <= len(c["logprobs"]["tokens"]) <= 3 for c in choices)  # EOS may end one
