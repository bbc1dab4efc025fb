"""The native backend through the command line, as a HipGPT user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import read_jsonl, run_toy_cli, subprocess_env, write_jsonl
from tests.support.toy_backend import write_toy_checkpoint


@pytest.fixture(scope="module")
def cases(native_reference: Path) -> list[dict]:
    """HipGPT runs with the default 50 tokens (the fixture also has shorter ones)."""
    data = json.loads((native_reference / "expected_outputs.json").read_text(encoding="utf-8"))
    return [
        c
        for c in data["cases"]
        if c["generated_ids"] is not None and c["cli_args"].get("num_tokens", 50) == 50
    ]


def gpt_simple(*argv: str, cwd: Path, plugins: str = "native") -> subprocess.CompletedProcess:
    """The real ``gpt-simple`` entry point, loading only the named plugins."""
    return subprocess.run(
        [sys.executable, "-m", "gpt_simple_core.cli.main", *argv],
        cwd=cwd,
        env=subprocess_env(GPT_SIMPLE_PLUGINS=plugins),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generate_greedy_prints_hipgpt_text(native_reference: Path, cases, tmp_path: Path):
    """`gpt-simple generate --checkpoint gpt_checkpoint.bin --greedy` == HipGPT's generate."""
    prompts = sorted({c["prompt"] for c in cases})
    argv = ["generate", "--checkpoint", str(native_reference / "gpt_checkpoint.bin"), "--greedy"]
    argv += ["--max-new-tokens", "50"]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    result = gpt_simple(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    expected = {c["prompt"]: c["generated_text"] for c in cases}
    assert [o["prompt"] for o in outputs] == prompts
    for output in outputs:
        assert output["completion"] == expected[output["prompt"]]
        assert output["meta"]["backend"] == "native"
        assert output["meta"]["finish_reason"] == "length"
        assert output["meta"]["notes"]["window"] == 32
        assert output["meta"]["notes"]["tokenizer_format"] == "v2"


def test_prompt_without_tokens_is_a_soft_error(native_reference: Path, tmp_path: Path):
    result = gpt_simple(
        "generate",
        "--checkpoint",
        str(native_reference),
        "--greedy",
        "--max-new-tokens",
        "3",
        "--prompt",
        "λ",
        "--prompt",
        "The assert statement",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # some records carry an error
    failed, ok = (json.loads(line) for line in result.stdout.splitlines())
    assert failed["error"]["message"] == "prompt produced no tokens"
    assert ok["completion"] == "is a class "


def test_stop_token_ids_is_hipgpts_eos_id(native_reference: Path, cases, tmp_path: Path):
    """HipGPT's --eos_id is a record's stop_token_ids: generation stops before that id and its
    text is left out. The fixture's own --eos_id run never hits id 3, so stop on an id the
    greedy continuation does produce: the 4th generated id of "The assert statement"."""
    case = next(c for c in cases if c["prompt"] == "The assert statement")
    stop_id = case["generated_ids"][3]
    records = [
        {
            "prompt": case["prompt"],
            "model": {"checkpoint": str(native_reference)},
            "generation": {"greedy": True, "max_new_tokens": 20, "stop_token_ids": [stop_id]},
        },
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    result = gpt_simple("batch-generate", "--input", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (output,) = (json.loads(line) for line in result.stdout.splitlines())
    assert output["meta"]["finish_reason"] == "stop"
    assert output["meta"]["completion_tokens"] == 3
    assert output["completion"] == "is a class "  # ids 185 151 302, without the stop id


def test_batch_mixes_native_and_another_backend(native_reference: Path, cases, tmp_path: Path):
    """Native and toy records interleaved: two groups, each loaded once, input order kept."""
    toy = write_toy_checkpoint(tmp_path / "toy", script="abc")
    expected = {c["prompt"]: c["generated_text"] for c in cases}
    prompts = ["The assert statement", "for each item in the list", "An exception is raised when"]
    records = []
    for i, prompt in enumerate(prompts):
        records.append(
            {
                "id": f"n{i}",
                "prompt": prompt,
                "model": {"checkpoint": str(native_reference / "gpt_checkpoint.bin")},
                "generation": {"greedy": True, "max_new_tokens": 50},
            }
        )
        records.append(
            {
                "id": f"t{i}",
                "prompt": "hi",
                "model": {"checkpoint": str(toy)},
                "generation": {"greedy": True, "max_new_tokens": 3},
            }
        )
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out.jsonl"
    result = run_toy_cli(
        ["--log-format", "json", "batch-generate", "--input", str(source), "--output", str(output)],
        cwd=tmp_path, GPT_SIMPLE_PLUGINS="native",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outputs = read_jsonl(output)
    assert [o["id"] for o in outputs] == [r["id"] for r in records]
    for o in outputs:
        if o["id"].startswith("n"):
            assert (o["meta"]["backend"], o["completion"]) == ("native", expected[o["prompt"]])
        else:
            assert (o["meta"]["backend"], o["completion"]) == ("toy", "abc")
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    loads = [e["checkpoint"] for e in events if e.get("event") == "loading"]
    assert sorted(loads) == sorted([str(native_reference / "gpt_checkpoint.bin"), str(toy)])
