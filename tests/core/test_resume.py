"""Sweeps that survive: resume after any interruption, exactly once, byte for byte, and never
overwrite what a user has (issue 12). Real CLI runs in subprocesses with the toy backend."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.core.helpers import run_toy_cli, subprocess_env, toy_cli_command, write_jsonl
from tests.support.toy_backend import write_toy_checkpoint

MODELS = ("a", "b")
FLAGS = ("--seed", "11", "--batch-size", "8")
OUT = "out.jsonl"
SIDECAR = "out.jsonl.gpt-simple"


#: Seconds per forward call of the interrupted runs (``$TOY_DELAY``): about 8 s for the sweep,
#: so random interrupts land mid-run. The reference runs at full speed: same output.
SLOW = "0.03"


def sweep(folder: Path, count: int = 300) -> Path:
    """``count`` records over two toy models, interleaved, greedy and seeded."""
    for name in MODELS:
        write_toy_checkpoint(folder / name, script=name * 3 + "!")
    records = []
    for i in range(count):
        generation: dict = {"max_new_tokens": 2 + i % 5}
        if i % 3 == 0:
            generation["greedy"] = True
        elif i % 3 == 1:
            generation["seed"] = 1000 + i
        model = {"checkpoint": MODELS[i % 2]}
        prompt = "ab" * (1 + i % 4)
        records.append({"id": i, "prompt": prompt, "model": model, "generation": generation})
    return write_jsonl(folder / "in.jsonl", records)


def cli(folder: Path, *argv: str, output: str = OUT) -> subprocess.CompletedProcess[str]:
    return run_toy_cli(
        ["batch-generate", "--input", "in.jsonl", "--output", output, *FLAGS, *argv], cwd=folder
    )


def start(folder: Path, *argv: str, delay: str = SLOW) -> subprocess.Popen:
    return subprocess.Popen(
        toy_cli_command("batch-generate", "--input", "in.jsonl", "--output", OUT, *FLAGS, *argv),
        cwd=folder,
        env=subprocess_env(TOY_DELAY=delay),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def reference(tmp_path: Path) -> bytes:
    """The uninterrupted run's output (same checkpoints, same flags)."""
    sweep(tmp_path)
    result = cli(tmp_path, output="ref.jsonl")
    assert result.returncode == 0, result.stderr
    return (tmp_path / "ref.jsonl").read_bytes()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interrupt_repeatedly(folder: Path, sig: signal.Signals, rounds: int, seed: int) -> list[int]:
    """Start, wait a random while, send ``sig``; resume each time. Returns the exit codes."""
    rng = random.Random(seed)
    codes = []
    for round_number in range(rounds):
        proc = start(folder, *(("--resume",) if round_number else ()))
        time.sleep(rng.uniform(0.6, 1.6))
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        codes.append(proc.returncode)
        assert "Traceback" not in err, err
    return codes


def finish(folder: Path) -> None:
    result = cli(folder, "--resume")
    assert result.returncode == 0, result.stderr


def test_sigkill_ten_times_then_resume_is_byte_identical(tmp_path: Path, reference: bytes):
    codes = interrupt_repeatedly(tmp_path, signal.SIGKILL, rounds=10, seed=1)
    assert codes.count(-signal.SIGKILL) >= 5, codes  # most kills landed mid-run
    finish(tmp_path)
    assert (tmp_path / OUT).read_bytes() == reference
    manifest = json.loads((tmp_path / SIDECAR / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["written"] == 300
    assert not (tmp_path / SIDECAR / "spool.jsonl").exists()


def test_sigterm_ten_times_exits_143_and_resumes_byte_identical(tmp_path: Path, reference: bytes):
    codes = interrupt_repeatedly(tmp_path, signal.SIGTERM, rounds=10, seed=2)
    # 143 from our handler; -15 only if the signal came before Python started running main
    assert codes.count(143) >= 5, codes
    assert set(codes) <= {0, 143, -signal.SIGTERM}, codes
    finish(tmp_path)
    assert (tmp_path / OUT).read_bytes() == reference


@pytest.mark.parametrize("tail", [b"", b"\0" * 700, b'{"id": 3, "prom', b"\xff\xfegarbage\n{}\n"])
def test_a_torn_zero_padded_or_garbled_tail_is_dropped(tmp_path: Path, reference: bytes, tail):
    """A power cut: the last records were not all written, the file may end in zeros."""
    assert cli(tmp_path).returncode == 0
    data = (tmp_path / OUT).read_bytes()
    rng = random.Random(len(tail))
    for cut in sorted(rng.sample(range(1, len(data)), 3), reverse=True):
        (tmp_path / OUT).write_bytes(data[:cut] + tail)
        finish(tmp_path)
        assert (tmp_path / OUT).read_bytes() == reference, cut


def test_duplicated_or_missing_lines_are_run_again_not_kept(tmp_path: Path, reference: bytes):
    assert cli(tmp_path).returncode == 0
    lines = (tmp_path / OUT).read_bytes().splitlines(keepends=True)
    (tmp_path / OUT).write_bytes(b"".join(lines[:40] + lines[39:120] + lines[121:200]))
    finish(tmp_path)
    assert (tmp_path / OUT).read_bytes() == reference


def test_the_output_may_not_be_the_input(tmp_path: Path):
    source = sweep(tmp_path, count=4)
    (tmp_path / "link.jsonl").symlink_to(source)
    os.link(source, tmp_path / "hard.jsonl")
    before = digest(source)
    for output in ("in.jsonl", "link.jsonl", "hard.jsonl", str(source)):
        result = cli(tmp_path, output=output)
        assert result.returncode == 2, result.stderr
        assert "is the input file" in result.stderr and "destroy the input" in result.stderr
    assert digest(source) == before


def test_existing_outputs_are_never_replaced_without_a_flag(tmp_path: Path):
    sweep(tmp_path, count=6)
    foreign = tmp_path / OUT
    foreign.write_text("my notes\n")
    result = cli(tmp_path)
    assert result.returncode == 2 and "was not written by gpt-simple" in result.stderr
    assert foreign.read_text() == "my notes\n"
    assert cli(tmp_path, "--resume").returncode == 2  # no manifest: nothing to check it with
    assert cli(tmp_path, "--overwrite").returncode == 0
    complete = digest(foreign)
    result = cli(tmp_path)
    assert result.returncode == 2 and "complete output of an earlier run" in result.stderr
    assert digest(foreign) == complete
    result = cli(tmp_path, "--resume")  # a requeued job: nothing left to do
    assert result.returncode == 0 and "nothing to run" in result.stderr
    assert digest(foreign) == complete
    # an interrupted one: refused without --resume, its bytes untouched
    data = foreign.read_bytes()
    foreign.write_bytes(data[: len(data) // 2])
    partial = digest(foreign)
    result = cli(tmp_path)
    assert result.returncode == 2 and "of an interrupted run" in result.stderr
    assert "--resume continues it" in result.stderr and digest(foreign) == partial
    assert cli(tmp_path, "--resume", "--overwrite").returncode == 2


def test_a_changed_job_is_refused_with_the_reason(tmp_path: Path):
    sweep(tmp_path, count=20)
    assert cli(tmp_path).returncode == 0
    data = (tmp_path / OUT).read_bytes()
    (tmp_path / OUT).write_bytes(data[: len(data) // 2])
    before = digest(tmp_path / OUT)

    result = cli(tmp_path, "--resume", "--temperature", "0.5")
    assert result.returncode == 2
    assert "refusing to resume" in result.stderr
    assert "defaults: generation.temperature was null, now 0.5" in result.stderr
    result = cli(tmp_path, "--resume", "--seed", "12")
    assert "the run seed changed: 11 then, 12 now" in result.stderr
    write_toy_checkpoint(tmp_path / "b", script="bbb?")  # new weights
    result = cli(tmp_path, "--resume")
    assert f"the weights of {tmp_path / 'b'} changed" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "in.jsonl").read_text().splitlines()]
    records[3]["prompt"] = "changed"
    write_jsonl(tmp_path / "in.jsonl", records)
    result = cli(tmp_path, "--resume")
    assert "the input changed: 20 records" in result.stderr
    assert digest(tmp_path / OUT) == before  # every refusal left the output alone

    # force: what changed runs again, the rest is kept; the result is the new job's output
    assert cli(tmp_path, "--resume=force").returncode == 0
    assert cli(tmp_path, output="fresh.jsonl").returncode == 0
    assert (tmp_path / OUT).read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()


def test_failed_records_are_kept_unless_retried(tmp_path: Path):
    write_toy_checkpoint(tmp_path / "m", poison="z", script="ok")
    prompts = ["z" if i % 4 == 1 else "ab" for i in range(8)]
    records = [{"id": i, "prompt": p, "model": {"checkpoint": "m"}} for i, p in enumerate(prompts)]
    write_jsonl(tmp_path / "in.jsonl", records)
    result = cli(tmp_path, "--max-new-tokens", "2")
    assert result.returncode == 1  # some records carry an error
    first = (tmp_path / OUT).read_bytes()
    result = cli(tmp_path, "--resume", "--max-new-tokens", "2")
    assert result.returncode == 1 and "nothing to run" in result.stderr
    assert (tmp_path / OUT).read_bytes() == first
    result = cli(tmp_path, "--resume", "--retry-errors", "--max-new-tokens", "2")
    assert result.returncode == 1
    assert result.stderr.count("record failed") == 2  # the two failed records ran again
    out = [json.loads(line) for line in (tmp_path / OUT).read_text().splitlines()]
    assert [("error" in r) for r in out] == [i % 4 == 1 for i in range(8)]


@pytest.mark.parametrize(("how", "code"), [("SIGUSR1", 138), ("max-runtime", 138)])
def test_time_limits_stop_cleanly_and_resume(tmp_path: Path, reference: bytes, how, code):
    extra = ("--max-runtime", "2") if how == "max-runtime" else ()
    proc = start(tmp_path, *extra)
    if how == "SIGUSR1":
        time.sleep(1.5)
        proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped ({how})" in err
    manifest = json.loads((tmp_path / SIDECAR / "manifest.json").read_text())
    assert manifest["status"] == "stopped"
    finish(tmp_path)
    assert (tmp_path / OUT).read_bytes() == reference


def test_a_second_writer_of_the_same_output_is_refused(tmp_path: Path):
    sweep(tmp_path, count=300)
    first = start(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / SIDECAR / "manifest.json").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = cli(tmp_path, "--resume")
        assert second.returncode == 2
        assert f"is being written by another gpt-simple run (pid {first.pid})" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_generate_resumes_too(tmp_path: Path):
    write_toy_checkpoint(tmp_path / "m", script="xyz")
    prompts = [arg for i in range(40) for arg in ("--prompt", f"p{i}")]
    base = ["generate", "--checkpoint", "m", "--seed", "3", *prompts]
    argv = [*base, "--output", OUT]
    ref = run_toy_cli([*base, "--output", "ref.jsonl"], cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    env = subprocess_env(TOY_DELAY="0.05")
    proc = subprocess.Popen(toy_cli_command(*argv), cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    result = run_toy_cli([*argv, "--resume"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / OUT).read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
