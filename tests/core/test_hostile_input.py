"""Faults and hostile input (issue 19): one bad record fails alone, bad files are refused with
a message (exit 2, no traceback), nothing hangs or grows without bound.

Each test names the item of the issue it holds; the engine's memory bounds run on the toy
backend (its ``kv_bytes`` and ``budget`` knobs), the real torch cache in tests/torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt_simple_core.engine.capacity import RESERVE_NEW_TOKENS, reachable_length, too_long
from gpt_simple_core.errors import CheckpointError
from tests.core.helpers import cli, run_batch, subprocess_env, write_jsonl
from tests.support.checkpoints import write_checkpoint, write_run_dir
from tests.support.plugins import resolve_checkpoint
from tests.support.toy_backend import ToyModel, write_toy_checkpoint

DEEP = 100_000  # far past Python's recursion limit


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_clean_refusal(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    for needle in needles:
        assert needle in err, err


# 1. Records that cannot fit in memory fail alone --------------------------------------------
def test_a_record_too_long_for_memory_fails_alone_and_the_others_run(tmp_path, toy, capsys):
    # 4 KiB a token against a 1 MiB budget: rows of at most 192 tokens fit
    write_toy_checkpoint(tmp_path / "toy", kv_bytes=4096, budget=1 << 20)
    records = [
        {"prompt": "ab", "generation": {"max_new_tokens": 5}},
        {"prompt": "ab", "generation": {"max_new_tokens": 100_000_000}},
        {"prompt": "ab", "generation": {"max_new_tokens": 10**32}},
        {"prompt": "b" * 300, "generation": {"max_new_tokens": 5}},  # the prompt alone is too long
        {"prompt": "ba", "generation": {"max_new_tokens": 5}},
    ]
    code, out, err = run_batch(capsys, tmp_path, records, "--checkpoint", "toy")
    assert code == 1, err
    assert [("error" in r) for r in out] == [False, True, True, True, False]
    assert "needs" in out[1]["error"]["message"] and "KV cache" in out[1]["error"]["message"]
    assert "about 2**" in out[2]["error"]["message"]  # no float overflow on 10**32
    assert "prompt (300 tokens)" in out[3]["error"]["message"]
    assert len(out[0]["completion"]) and len(out[4]["completion"])
    # the records that fail do not shrink the batch of those that fit to one row
    (model,) = toy.loaded
    assert model.reserved[0][0] > 1


def test_the_plan_names_records_that_cannot_fit(tmp_path, toy, capsys):
    write_toy_checkpoint(tmp_path / "toy", kv_bytes=1 << 20)  # 1 MiB a token
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "a", "generation": {"max_new_tokens": 4}},
            {"prompt": "a", "generation": {"max_new_tokens": 100_000_000}},
        ],
    )
    code, out, err = cli(
        capsys, "batch-generate", "--input", str(source), "--checkpoint", "toy", "--dry-run",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "1 record cannot fit in memory (line 2 first)" in out
    assert "each will be that record's error" in out


def test_the_cache_is_reserved_for_what_rows_reach_not_for_max_new_tokens(tmp_path, toy, capsys):
    write_toy_checkpoint(tmp_path / "toy", kv_bytes=64, budget=1 << 30, eos_after=3)
    records = [{"prompt": "ab", "generation": {"max_new_tokens": 1_000_000}}]
    started = time.monotonic()
    code, out, err = run_batch(capsys, tmp_path, records, "--checkpoint", "toy")
    assert code == 0, err
    assert out[0]["completion"] and time.monotonic() - started < 30
    ((slots, length),) = toy.loaded[0].reserved
    assert slots == 1 and length <= 2 + RESERVE_NEW_TOKENS


def test_a_context_bounded_policy_bounds_the_row(toy):
    model = ToyModel({"context": 64, "kv_bytes": 4096, "overflow": "truncate"}, _request())
    assert reachable_length(model, 10, 10**9) == 64
    assert too_long(model, 10, 10**9, limit=100) is None
    model.context_overflow = "extrapolate"
    assert reachable_length(model, 10, 10**9) == 10**9 + 10
    assert "KV cache" in too_long(model, 10, 10**9, limit=100)


def _request():
    from gpt_simple.plugins import LoadRequest

    return LoadRequest(dtype="fp32", device="cpu")


# 6. A config the weights cannot hold ---------------------------------------------------------
def test_a_huge_n_layer_is_refused_at_once(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c")
    config_file = ckpt / "model" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "n_layer": 1_000_000_000}))
    started = time.monotonic()
    code, _, err = cli(capsys, "validate", str(ckpt))
    assert time.monotonic() - started < 5
    assert_clean_refusal(code, err, "parameters, more than the", "bytes of weights can hold")


# 7. An endless line ------------------------------------------------------------------------
def test_an_endless_input_line_is_cut_at_the_limit(tmp_path):
    with open("/dev/zero", "rb") as zero:
        result = _endless(zero, tmp_path)
    assert_clean_refusal(result.returncode, result.stderr, "longer than 1048576 bytes")


def _endless(zero, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "gpt_simple_core.cli.main", "batch-generate", "--input", "-",
         "--dry-run", "--max-line-bytes", "1M"],
        stdin=zero, capture_output=True, text=True, timeout=120,
        env=subprocess_env(), cwd=tmp_path,
    )  # fmt: skip


def test_a_long_line_is_that_lines_problem(tmp_path, capsys, toy_ckpt):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n{"prompt": "' + "x" * 5000 + '"}\n')
    code, _, err = cli(
        capsys, "batch-generate", "--input", str(source), "--checkpoint", "toy", "--dry-run",
        "--max-line-bytes", "1K",
    )  # fmt: skip
    assert_clean_refusal(code, err, "in.jsonl:2:", "--max-line-bytes")


@pytest.mark.parametrize("value", ["0", "abc", "-5", "1T"])
def test_a_bad_line_limit_is_refused(capsys, value, toy_ckpt):
    code, _, err = cli(capsys, "batch-generate", "--input", "x", "--max-line-bytes", value)
    assert code == 2 and "--max-line-bytes" in err and "Traceback" not in err


# 8. Threads -------------------------------------------------------------------------------
def test_threads_are_bounded_by_the_usable_cpus(tmp_path, capsys, toy_ckpt):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    argv = ("batch-generate", "--input", str(source), "--checkpoint", "toy", "--threads", "100000")
    code, out, err = cli(capsys, *argv, "--dry-run")
    assert code == 0, err
    assert "threads 100000 is more than the" in out
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    assert "threads 100000 is more than the" in err  # a real run says it too


# 9. Deeply nested JSON ---------------------------------------------------------------------
def test_deep_json_in_an_input_line_is_that_lines_problem(tmp_path, capsys, toy_ckpt):
    source = tmp_path / "in.jsonl"
    deep_key = '{"prompt": "a", "extra": ' + deep_json(500) + "}"
    source.write_text('{"prompt": "a"}\n' + deep_json(DEEP) + "\n" + deep_key + "\n")
    code, _, err = cli(capsys, "batch-generate", "--input", str(source), "--checkpoint", "toy")
    assert_clean_refusal(code, err, "in.jsonl:2: invalid JSON: nested deeper", "in.jsonl:3:")


def test_deep_json_in_a_prompts_file(tmp_path, capsys, toy_ckpt):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(deep_json(DEEP) + "\n")
    code, _, err = cli(capsys, "generate", "--checkpoint", "toy", "--prompts-file", str(prompts))
    assert_clean_refusal(code, err, "nested deeper")


@pytest.mark.parametrize(
    "relative", ["model/config.json", "tokenizer/tokenizer_config.json", "trainer_state.json"]
)
def test_deep_json_in_checkpoint_files_is_a_checkpoint_error(tmp_path, relative):
    ckpt = write_checkpoint(tmp_path / "c")
    (ckpt / relative).write_text(deep_json(DEEP))
    if relative == "trainer_state.json":  # an unreadable state: no step, still a checkpoint
        assert resolve_checkpoint(str(ckpt)).step is None
        return
    with pytest.raises(CheckpointError):
        resolve_checkpoint(str(ckpt))


def test_a_damaged_sibling_trainer_state_is_skipped_with_a_warning(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-10": 10, "checkpoint-20": 20})
    (run / "checkpoints" / "checkpoint-20" / "trainer_state.json").write_text(deep_json(DEEP))
    info = resolve_checkpoint(str(run))
    assert info.path.name == "checkpoint-10"
    assert any("checkpoint-20" in w and "damaged" in w for w in info.warnings)


# 10. Malformed safetensors headers ---------------------------------------------------------
def _write_header(path: Path, header: object, data: bytes = b"") -> None:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ([1, 2, 3], "not an object of tensors"),
        ({"w": 5}, "its entry is int"),
        ({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}, "shape must be a list"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, "data_offsets"),
        ({"w": {"dtype": 7, "shape": [4], "data_offsets": [0, 16]}}, "dtype must be a string"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, "offsets span"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "truncated"),
        (deep_json(DEEP), "nested too deeply"),
        ('{"w": 1, "w": 2}', "duplicate key"),
    ],
)
def test_malformed_safetensors_headers_are_refused(tmp_path, header, needle):
    ckpt = write_checkpoint(tmp_path / "c")
    _write_header(ckpt / "model" / "model.safetensors", header, data=b"\0" * 8)
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as raised:
        resolve_checkpoint(str(ckpt))
    assert needle in str(raised.value)


def test_a_truncated_safetensors_fails_validate(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c")
    weights = ckpt / "model" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    code, _, err = cli(capsys, "validate", str(ckpt))
    assert_clean_refusal(code, err, "truncated", "100 missing")


# 11. Paths that no file can have -----------------------------------------------------------
HOSTILE_PATHS = {
    "~nosuchuser_xyz/x": "a ~user that does not exist",
    "a\0b": "NUL byte",
    "x" * 5000: "too long",
    "": "an empty path names no checkpoint",
    "loop": "symbolic link loop",
}


@pytest.fixture
def hostile_paths(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return HOSTILE_PATHS


def test_hostile_paths_in_records_are_problems_of_their_lines(
    tmp_path, capsys, hostile_paths, toy_ckpt
):
    lines = [{"prompt": "a", "model": {"checkpoint": path}} for path in hostile_paths]
    source = write_jsonl(
        tmp_path / "in.jsonl", [*lines, {"prompt": "a", "model": {"checkpoint": "toy"}}]
    )
    code, _, err = cli(capsys, "batch-generate", "--input", str(source), "--dry-run")
    assert_clean_refusal(code, err, *(f"in.jsonl:{n}:" for n in range(1, len(lines) + 1)))
    for needle in hostile_paths.values():
        assert needle in err
    assert "in.jsonl:6" not in err


@pytest.mark.parametrize("path", list(HOSTILE_PATHS))
def test_hostile_paths_through_validate_and_checkpoint(tmp_path, capsys, hostile_paths, path):
    if "\0" in path:  # argv cannot carry a NUL: the Python API can
        with pytest.raises(CheckpointError, match="NUL byte"):
            resolve_checkpoint(path)
        return
    code, _, err = cli(capsys, "validate", path)
    assert_clean_refusal(code, err, hostile_paths[path])
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    code, _, err = cli(
        capsys, "batch-generate", "--input", str(source), "--checkpoint", path, "--dry-run"
    )
    assert_clean_refusal(code, err, hostile_paths[path])


# 12. export --out an existing file ---------------------------------------------------------
def test_export_out_refuses_an_existing_file(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c")
    (tmp_path / "taken").write_text("mine")
    code, _, err = cli(capsys, "export", str(ckpt), "--out", str(tmp_path / "taken"))
    assert_clean_refusal(code, err, "exists and is not a folder")
    assert (tmp_path / "taken").read_text() == "mine"


# 13. Clear messages ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"prompt": "a", "generation": {"temperature": 1e-320}}', "must be at least 1e-06"),
        ('{"prompt": "a", "generation": {"temperature": NaN}}', "finite number"),
        ('{"prompt": "a", "generation": {"top_p": Infinity}}', "finite number"),
        ('{"prompt": "a", "prompt": "b"}', "duplicate key 'prompt'"),
        ('{"prompt": "a", "generation": {"seed": 1, "seed": 2}}', "duplicate key 'seed'"),
    ],
)
def test_bad_record_values_are_refused_at_plan_time(tmp_path, capsys, toy_ckpt, line, needle):
    source = tmp_path / "in.jsonl"
    source.write_text(line + "\n")
    code, _, err = cli(capsys, "batch-generate", "--input", str(source), "--checkpoint", "toy")
    assert_clean_refusal(code, err, "in.jsonl:1:", needle)


def test_a_nan_norm_eps_is_refused(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    config_file = ckpt / "model" / "config.json"
    config_file.write_text(config_file.read_text().rstrip()[:-1] + ', "norm_eps": NaN}')
    with pytest.raises(CheckpointError, match="norm_eps"):
        resolve_checkpoint(str(ckpt))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "does not exist"),
    ],
)
def test_unusable_inputs_say_what_they_are(tmp_path, capsys, toy_ckpt, make, needle):
    make(tmp_path / "input")
    code, _, err = cli(capsys, "batch-generate", "--input", str(tmp_path / "input"))
    assert_clean_refusal(code, err, needle)


def test_an_empty_input_such_as_dev_null_is_said_to_be_empty(capsys, toy_ckpt):
    code, out, err = cli(
        capsys, "batch-generate", "--input", "/dev/null", "--checkpoint", "toy", "--dry-run"
    )
    assert code == 0, err
    assert "contains no records" in out


def test_a_fifo_input_is_read(tmp_path, toy_ckpt):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "tests.support.toy_cli", "batch-generate", "--input",
               str(fifo), "--checkpoint", "toy", "--max-new-tokens", "2"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(), cwd=tmp_path,
    )  # fmt: skip
    fifo.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["a", "b"]


def test_output_dash_is_stdout(tmp_path, capsys, toy_ckpt):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    code, out, err = cli(
        capsys, "batch-generate", "--input", str(source), "--checkpoint", "toy", "--output", "-",
        "--max-new-tokens", "2",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["prompt"] == "a"
    assert not (tmp_path / "-").exists()


def test_the_dry_run_checks_the_output_too(tmp_path, capsys, toy_ckpt):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    argv = ("batch-generate", "--input", str(source), "--checkpoint", "toy", "--dry-run")
    code, _, err = cli(capsys, *argv, "--output", str(source / "out.jsonl"))
    assert_clean_refusal(code, err, "is not a folder")
    code, _, err = cli(capsys, *argv, "--output", str(source))
    assert_clean_refusal(code, err, "is the input file")
    (tmp_path / "theirs.jsonl").write_text("not ours\n")
    code, _, err = cli(capsys, *argv, "--output", str(tmp_path / "theirs.jsonl"))
    assert_clean_refusal(code, err, "--overwrite replaces it")
    code, _, err = cli(capsys, *argv, "--output", str(tmp_path / "new" / "out.jsonl"))
    assert code == 0, err
    assert not (tmp_path / "new").exists()  # a dry-run writes nothing
