"""The command line: the dry-run imports no heavy runtime, stdout is pure JSONL, progress and
logs go to stderr, ``generate``, exit codes, and bad input never shows a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_simple_core.output import progress as progress_module
from gpt_simple_core.output.progress import Progress
from tests.core.helpers import (
    cli,
    read_jsonl,
    run_toy_cli,
    subprocess_env,
    toy_cli_command,
    write_jsonl,
)
from tests.support.checkpoints import write_run_dir
from tests.support.toy_backend import write_toy_checkpoint

HEAVY_PREFIX = "heavy-modules: "


def heavy_modules(stderr: str) -> list[str]:
    (line,) = [line for line in stderr.splitlines() if line.startswith(HEAVY_PREFIX)]
    return json.loads(line[len(HEAVY_PREFIX) :])


# The dry-run imports no torch -----------------------------------------------------------
def test_dry_run_imports_neither_torch_nor_onnxruntime(tmp_path, toy):
    write_toy_checkpoint(tmp_path / "toy")
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    result = run_toy_cli(
        ["batch-generate", "--input", str(source), "--checkpoint", "toy", "--dry-run"],
        cwd=tmp_path,
        TOY_CLI_REPORT_MODULES="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Plan for {source}: 2 records in 1 group ")
    assert heavy_modules(result.stderr) == []


def test_dry_run_over_gpt_simple_run_dirs_imports_no_torch(tmp_path):
    """Resolution, tokenizer loading and the safetensors header check run; no torch."""
    write_run_dir(tmp_path / "run", {"checkpoint-5": 5})
    write_toy_checkpoint(tmp_path / "toy")
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "a", "model": {"checkpoint": "run"}},
            {"prompt": "b", "model": {"checkpoint": "toy"}},
        ],
    )
    result = run_toy_cli(
        ["batch-generate", "--input", str(source), "--dry-run", "--plan-format", "json"],
        cwd=tmp_path,
        TOY_CLI_REPORT_MODULES="1",
    )
    assert heavy_modules(result.stderr) == []
    # no backend for gpt-simple checkpoints is registered here: a problem, reported cleanly
    assert result.returncode == 2
    plan = json.loads(result.stdout)
    assert [g["checkpoint"] for g in plan["groups"]] == [str(tmp_path / "toy")]
    assert "no installed backend runs gpt-simple checkpoints automatically" in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_with_the_installed_plugins_imports_no_torch(tmp_path):
    """Whatever backends this environment installs, planning must not import their runtime."""
    write_run_dir(tmp_path / "run", {"checkpoint-5": 5})
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "model": {"checkpoint": "run"}}])
    runner = (
        "import sys\n"
        "from gpt_simple_core.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime'))\n"
        f"print({HEAVY_PREFIX!r} + repr(heavy).replace(\"'\", '\"'), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = subprocess_env()
    del env["GPT_SIMPLE_PLUGINS"]
    result = subprocess.run(
        [sys.executable, "-c", runner, "batch-generate", "--input", str(source), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert heavy_modules(result.stderr) == []
    assert result.returncode in (0, 2), result.stderr  # 2: no backend installed for the format
    assert "Traceback" not in result.stderr


# stdout is JSONL only; logs and progress on stderr ---------------------------------------
def assert_pure_jsonl(stdout: str, count: int) -> list[dict]:
    lines = stdout.splitlines()
    assert len(lines) == count
    return [json.loads(line) for line in lines]  # every line parses


def test_generate_stdout_is_pure_jsonl(tmp_path):
    write_toy_checkpoint(tmp_path / "m", delay=0.01)
    result = run_toy_cli(
        [
            "--log-level",
            "debug",
            "generate",
            "--checkpoint",
            "m",
            "--prompt",
            "the try statement",
            "--prompt",
            "123",  # no tokens: a record error, logged on stderr
            "--prompt",
            "an exception",
            "--max-new-tokens",
            "5",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    records = assert_pure_jsonl(result.stdout, 3)
    assert [r["prompt"] for r in records] == ["the try statement", "123", "an exception"]
    assert "error" in records[1] and isinstance(records[0]["completion"], str)
    err = result.stderr
    for event in ("loading", "progress", "record failed", "done"):
        assert event in err
    assert "3/3 records, 1 failed | " in err and "tok/s" in err  # the progress line
    assert '"completion"' not in err


def test_batch_generate_to_stdout_with_a_spool(tmp_path):
    for name in ("a", "b"):
        write_toy_checkpoint(tmp_path / name, script=name)
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": i, "prompt": "x", "model": {"checkpoint": "ab"[i % 2]}} for i in range(6)],
    )
    cache = tmp_path / "cache"
    result = run_toy_cli(
        ["--log-level", "debug", "batch-generate", "--input", str(source), "--max-new-tokens", "2"],
        cwd=tmp_path,
        XDG_CACHE_HOME=str(cache),
    )
    assert result.returncode == 0, result.stderr
    records = assert_pure_jsonl(result.stdout, 6)
    assert [(r["id"], r["completion"]) for r in records] == [(i, "ab"[i % 2] * 2) for i in range(6)]
    assert "spooled" in result.stderr  # b's records waited for a's (said at debug level only)
    assert list((cache / "gpt-simple" / "spool").iterdir()) == []  # removed at the end


def test_stdin_input(tmp_path):
    write_toy_checkpoint(tmp_path / "m", script="ok")
    lines = b'{"prompt": "a"}\n{"prompt": "b", "k": "\xc3\xa9"}\n'
    result = subprocess.run(
        toy_cli_command(
            "batch-generate", "--input", "-", "--checkpoint", "m", "--max-new-tokens", "2"
        ),
        cwd=tmp_path,
        env=subprocess_env(),
        input=lines,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert [r["completion"] for r in records] == ["ok", "ok"]
    assert records[1]["k"] == "é"


def test_progress_logs_periodically_on_stderr(tmp_path, toy, capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_EVERY_SECONDS", 0.0)
    write_toy_checkpoint(tmp_path / "m")
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "abc"}] * 4)
    code, out, err = cli(
        capsys,
        "batch-generate",
        "--input",
        str(source),
        "--checkpoint",
        "m",
        "--max-new-tokens",
        "5",
        "--batch-size",
        "2",
    )
    assert code == 0
    assert_pure_jsonl(out, 4)
    progress_lines = [line for line in err.splitlines() if "progress" in line]
    assert len(progress_lines) >= 5
    assert "4/4 records" in progress_lines[-1]
    assert "ETA" in progress_lines[-1]


def test_progress_draws_a_live_line_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    progress = Progress(3, stream=screen)
    assert progress.live
    progress.add_tokens(5)
    progress.record_done()
    progress.record_done(failed=True)
    monkeypatch.setattr(progress_module, "REDRAW_EVERY_SECONDS", 1e9)
    progress.record_done()  # the last one always draws
    progress.close()
    text = screen.getvalue()
    assert text.startswith("\r\x1b[K0/3 records")
    assert "\r\x1b[K3/3 records, 1 failed | " in text
    assert text.endswith("\n")
    quiet = Progress(3, stream=io.StringIO())
    assert not quiet.live  # not a terminal: periodic log lines instead


def test_progress_eta():
    progress = Progress(10, stream=io.StringIO(), enabled=False)
    assert progress.line().endswith("ETA ?")
    progress.started -= 20.0
    progress.done = 5
    progress.tokens = 100
    line = progress.line()
    assert line.startswith("5/10 records | 5.0 tok/s | ETA 0m2")  # ~20 s left


# gpt-simple generate -------------------------------------------------------------------
def test_generate_prompts(tmp_path, toy, capsys):
    write_toy_checkpoint(tmp_path / "m", script="hello world")
    code, out, _ = cli(
        capsys,
        "generate",
        "--checkpoint",
        "m",
        "--prompt",
        "one",
        "--prompt",
        "two",
        "--max-new-tokens",
        "11",
        "--stop",
        "zz",
        "--stop",
        "o w",
        "--greedy",
        "--return-full-text",
    )
    assert code == 0
    records = assert_pure_jsonl(out, 2)
    assert [r["completion"] for r in records] == ["onehell", "twohell"]
    generation = records[0]["generation"]
    assert generation["stop"] == ["zz", "o w"]
    assert generation["greedy"] is True and generation["return_full_text"] is True
    assert list(records[0]) == ["prompt", "completion", "generation", "meta"]
    assert records[0]["meta"]["finish_reason"] == "stop"


def test_generate_prompts_file_to_an_output_file(tmp_path, toy, capsys):
    write_toy_checkpoint(tmp_path / "m", script="ok")
    source = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"prompt": "y", "n": 2}]
    )
    code, out, _ = cli(
        capsys,
        "generate",
        "--output-dir",
        "m",
        "--prompts-file",
        str(source),
        "--output",
        "o.jsonl",
    )
    assert code == 0 and out == ""
    records = read_jsonl(tmp_path / "o.jsonl")
    assert [(r.get("id"), r.get("n"), r["completion"]) for r in records] == [
        ("a", None, "ok" * 50),
        (None, 2, "ok" * 50),
    ]


def test_generate_prompts_file_refuses_per_record_settings(tmp_path, toy, capsys):
    write_toy_checkpoint(tmp_path / "m")
    source = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "x", "model": {"checkpoint": "m"}},
            {"prompt": "y", "generation": {"top_k": 1}},
            "not json",
            {"prompt": "z", "completion": "no"},
        ],
    )
    code, out, err = cli(capsys, "generate", "--checkpoint", "m", "--prompts-file", str(source))
    assert code == 2 and out == ""
    assert f"{source}:1: model: per-record settings need `gpt-simple batch-generate`" in err
    assert f"{source}:2: generation: per-record settings need `gpt-simple batch-generate`" in err
    assert f"{source}:3: invalid JSON" in err
    assert f"{source}:4: completion: is an output key" in err
    assert toy.loaded == []


def test_generate_without_a_checkpoint_announces_the_embedded_model(tmp_path, capsys):
    code, out, err = cli(capsys, "generate", "--prompt", "x")
    assert "no model given: records naming none use the embedded one" in err
    assert "builtin:default" in err
    assert code == 2 and out == ""  # no backend for it in this test environment
    assert "Traceback" not in err


# Exit codes and bad input ---------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["generate"], ["batch-generate"], ["validate"]])
def test_exit_codes_are_documented_in_help(capsys, command):
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0
    assert "exit status:" in out
    for status in ("0 ", "1 ", "2 ", "70 ", "130 ", "143 "):
        assert f"  {status}" in out or f"; {status}" in out, status


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["batch-generate"], "the following arguments are required: --input"),
        (["batch-generate", "--input", "x", "--dtype", "fp 8"], "malformed dtype 'fp 8'"),
        (["batch-generate", "--input", "x", "--plan-format", "xml"], "invalid choice: 'xml'"),
        (["batch-generate", "--input", "x", "--top-k", "many"], "invalid int value: 'many'"),
        (["batch-generate", "--input", "."], "input . is a directory, not a JSONL file"),
        (["generate", "--prompt", "a", "--prompts-file", "f"], "not allowed with argument"),
        (["generate", "--prompts-file", "missing.jsonl", "--checkpoint", "m"], "does not exist"),
        (["generate", "--prompt", "a", "--checkpoint", "nowhere"], "nowhere: no such file"),
        (["generate", "--prompt", "a", "--checkpoint", "m", "--tokenizer", "t"], "tokenizer t:"),
        (["generate", "--prompt", "a", "--checkpoint", "m", "--backend", "x"], "unknown backend"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["validate", "."], "is not a checkpoint any installed format plugin recognises"),
    ],
)
def test_bad_input_exits_2_without_a_traceback(tmp_path, toy, capsys, argv, expected):
    write_toy_checkpoint(tmp_path / "m")
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize("output", [".", "file.txt/out.jsonl"])
def test_an_output_that_cannot_be_written(tmp_path, toy, capsys, output):
    write_toy_checkpoint(tmp_path / "m")
    Path("file.txt").write_text("a file, not a folder")
    code, out, err = cli(
        capsys, "generate", "--prompt", "a", "--checkpoint", "m", "--output", output
    )
    assert code == 2 and out == ""
    assert f"gpt-simple: error: cannot write output {output}" in err
    assert "Traceback" not in err
    assert toy.loaded == []  # checked before anything loads


def test_invalid_utf8_and_lone_surrogates_are_problems_of_their_line(tmp_path, toy, capsys):
    write_toy_checkpoint(tmp_path / "m")
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b'{"prompt": "fine"}\n'
        b'{"prompt": "caf\xe9"}\n'  # Latin-1, not UTF-8
        b'{"prompt": "half a pair \\ud800"}\n'
        b'{"prompt": "a whole pair \\ud83d\\ude00 and a literal \\\\ud800"}\n'
    )
    code, out, err = cli(capsys, "batch-generate", "--input", str(source), "--checkpoint", "m")
    assert code == 2 and out == ""
    assert f"{source}:2: invalid UTF-8" in err
    assert f"{source}:3: invalid JSON: a \\uD800-\\uDFFF escape without its pair" in err
    assert f"{source}:4:" not in err and f"{source}:1:" not in err
    assert "Traceback" not in err


def test_a_config_file_that_is_not_utf8(tmp_path, toy, capsys):
    write_toy_checkpoint(tmp_path / "m")
    Path("gpt-simple.toml").write_bytes(b'[generation]\nstop = "\xe9"\n')
    code, _, err = cli(capsys, "generate", "--prompt", "a", "--checkpoint", "m")
    assert code == 2
    assert "gpt-simple.toml: cannot read config" in err and "Traceback" not in err
    Path("gpt-simple.toml").unlink()
    Path("pyproject.toml").write_bytes(b'[tool.x]\na = "\xe9"\n')  # someone else's file
    code, _, err = cli(
        capsys, "generate", "--prompt", "a", "--checkpoint", "m", "--max-new-tokens", "1"
    )
    assert code == 0, err


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith("gpt-simple ")
