"""Ordered output with a spool: unit tests of the writer, and real runs killed mid-way."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from gpt_simple_core.output.spool import STALE_SECONDS, OutputFailed, Spool, clean_stale_spools
from gpt_simple_core.output.writer import OrderedWriter
from tests.core.helpers import read_jsonl, run_toy_cli, subprocess_env, toy_cli_command, write_jsonl
from tests.support.toy_backend import write_toy_checkpoint


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def spooled(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_out_of_order_puts_are_written_in_order_and_the_spool_is_removed(tmp_path):
    stream = io.StringIO()
    spool = tmp_path / "spool.jsonl"
    writer = OrderedWriter(stream, range(5), Spool(spool))
    writer.put(2, {"n": 2, "text": "é"})
    writer.put(4, {"n": 4})
    assert stream.getvalue() == "" and writer.pending == 2
    assert spooled(spool) == [
        {"index": 2, "record": {"n": 2, "text": "é"}},
        {"index": 4, "record": {"n": 4}},
    ]
    writer.put(0, {"n": 0})
    assert [r["n"] for r in lines(stream)] == [0]
    writer.put(1, {"n": 1})
    assert [r["n"] for r in lines(stream)] == [0, 1, 2]
    writer.put(3, {"n": 3})
    assert [r["n"] for r in lines(stream)] == [0, 1, 2, 3, 4]
    assert writer.pending == 0 and writer.complete
    assert lines(stream)[2]["text"] == "é"
    writer.close()
    assert not spool.exists()


def test_in_order_puts_never_create_a_spool(tmp_path):
    stream = io.StringIO()
    writer = OrderedWriter(stream, range(2), Spool(tmp_path / "s.jsonl"))
    writer.put(0, {"n": 0})
    writer.put(1, {"n": 1})
    writer.close()
    assert not (tmp_path / "s.jsonl").exists()
    assert [r["n"] for r in lines(stream)] == [0, 1]


def test_an_order_of_some_positions_only(tmp_path):
    """A shard writes some of the input's records, in input order."""
    stream = io.StringIO()
    writer = OrderedWriter(stream, [1, 4, 7], Spool(tmp_path / "s.jsonl"))
    writer.put(7, {"n": 7})
    writer.put(1, {"n": 1})
    assert [r["n"] for r in lines(stream)] == [1]
    writer.put(4, {"n": 4})
    assert [r["n"] for r in lines(stream)] == [1, 4, 7] and writer.complete


def test_an_early_end_keeps_the_spool_and_names_it(tmp_path, capsys):
    stream = io.StringIO()
    spool = tmp_path / "deep" / "spool.jsonl"
    spool.parent.mkdir()
    writer = OrderedWriter(stream, range(4), Spool(spool))
    writer.put(0, {"n": 0})
    writer.put(2, {"n": 2})
    writer.put(3, {"n": 3})
    writer.close()
    assert [r["n"] for r in lines(stream)] == [0]
    assert spooled(spool) == [{"index": 2, "record": {"n": 2}}, {"index": 3, "record": {"n": 3}}]
    err = capsys.readouterr().err
    assert "run ended early" in err and str(spool) in err


def test_an_existing_spool_file_or_link_is_never_written_through(tmp_path):
    target = tmp_path / "someone-elses.txt"
    target.write_text("precious")
    (tmp_path / "spool.jsonl").symlink_to(target)
    writer = OrderedWriter(io.StringIO(), range(3), Spool(tmp_path / "spool.jsonl"))
    with pytest.raises(OutputFailed, match="File exists"):
        writer.put(2, {"n": 2})
    assert target.read_text() == "precious"
    writer.close()
    assert target.read_text() == "precious" and (tmp_path / "spool.jsonl").is_symlink()


def test_a_stdout_spool_is_private_and_removed(tmp_path):
    root = tmp_path / "cache" / "spool"
    spool = Spool.private(root)
    writer = OrderedWriter(io.StringIO(), range(2), spool)
    writer.put(1, {"n": 1})
    folder = spool.private_dir
    assert folder is not None and folder.parent == root and folder.name.startswith("run-")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "owner").read_text() == str(os.getpid())
    writer.put(0, {"n": 0})
    writer.close()
    assert not folder.exists()


def test_stale_spools_of_dead_runs_are_removed_and_nothing_else(tmp_path, capsys):
    root = tmp_path / "spool"
    dead, alive, young, foreign = (root / f"run-{name}" for name in ("dead", "alive", "young", "x"))
    for folder, pid in ((dead, 2**22 + 7), (alive, os.getpid()), (young, 2**22 + 7)):
        folder.mkdir(parents=True)
        (folder / "owner").write_text(str(pid))
    foreign.mkdir()  # no owner file: not ours
    old = time.time() - 2 * STALE_SECONDS
    for folder in (dead, alive):
        os.utime(folder / "owner", (old, old))
    removed = clean_stale_spools(root)
    assert removed == [dead]
    assert alive.exists() and young.exists() and foreign.exists()
    assert "removed stale spools of dead runs" in capsys.readouterr().err


def test_a_full_disk_cuts_the_file_back_to_whole_lines(tmp_path):
    class FullDisk(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.room = 60

        def write(self, text: str) -> int:
            if self.tell() + len(text) > self.room:
                super().write(text[: self.room - self.tell()])  # a partial line reaches it
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(text)

    stream = FullDisk()
    writer = OrderedWriter(stream, range(5), Spool(tmp_path / "s.jsonl"), name="out.jsonl")
    writer._seekable = True  # a StringIO stands in for a regular file here
    writer.put(0, {"n": 0, "pad": "x" * 20})
    with pytest.raises(OutputFailed, match=r"cannot write out\.jsonl: No space left on device"):
        writer.put(1, {"n": 1, "pad": "x" * 20})
    assert stream.getvalue().endswith("\n") and len(lines(stream)) == 1


# Real runs, interrupted ----------------------------------------------------------------
MODELS = ("a", "b", "c")
PER_MODEL = 8


@pytest.fixture
def interleaved(tmp_path) -> Path:
    """24 records over 3 slow toy models, interleaved a, b, c, a, b, c, ..."""
    for name in MODELS:
        write_toy_checkpoint(tmp_path / name, delay=0.04, script=name * 4)
    records = [
        {"id": i, "prompt": "abc", "model": {"checkpoint": MODELS[i % 3]}}
        for i in range(3 * PER_MODEL)
    ]
    return write_jsonl(tmp_path / "in.jsonl", records)


FLAGS = ("--seed", "1", "--max-new-tokens", "4", "--batch-size", "2")


def start(folder: Path, source: Path) -> subprocess.Popen:
    return subprocess.Popen(
        toy_cli_command(
            "--log-format",
            "json",
            "batch-generate",
            "--input",
            str(source),
            "--output",
            "out.jsonl",
            *FLAGS,
        ),
        cwd=folder,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_load(proc: subprocess.Popen, model: str, folder: Path) -> list[dict]:
    """Read stderr (JSON logs) until ``model`` starts loading; return the events read."""
    events = []
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"the run ended before loading {model}: {events}")
        events.append(json.loads(line))
        if events[-1].get("event") == "loading" and events[-1]["checkpoint"] == str(folder / model):
            return events
    pytest.fail("timed out")


def recovered(folder: Path) -> tuple[list[dict], list[dict]]:
    output = read_jsonl(folder / "out.jsonl")
    spool_file = folder / "out.jsonl.gpt-simple" / "spool.jsonl"
    spool = spooled(spool_file) if spool_file.exists() else []
    return output, spool


def check_nothing_lost_or_duplicated(folder: Path, finished_models: set[str]) -> dict[int, dict]:
    """Output: a gap-free prefix in order. Spool: one entry per index. Every record of a
    finished model is in one of them. Returns index -> record recovered."""
    output, spool = recovered(folder)
    assert [r["id"] for r in output] == list(range(len(output)))
    spool_indices = [entry["index"] for entry in spool]
    assert len(spool_indices) == len(set(spool_indices))
    assert all(entry["record"]["id"] == entry["index"] for entry in spool)
    by_index = {r["id"]: r for r in output}
    for entry in spool:
        if entry["index"] in by_index:  # copied to the output already: the same record
            assert entry["record"] == by_index[entry["index"]]
        by_index[entry["index"]] = entry["record"]
    for index in range(3 * PER_MODEL):
        if MODELS[index % 3] in finished_models:
            assert index in by_index, f"record {index} of a finished model was lost"
    return by_index


def reference(folder: Path, source: Path) -> dict[int, dict]:
    """The same run, uninterrupted and without the delay (which does not change results)."""
    for name in MODELS:
        write_toy_checkpoint(folder / name, script=name * 4)
    result = run_toy_cli(
        ["batch-generate", "--input", str(source), "--output", "ref.jsonl", *FLAGS], cwd=folder
    )
    assert result.returncode == 0, result.stderr
    return {r["id"]: r for r in read_jsonl(folder / "ref.jsonl")}


def test_sigkill_mid_run_loses_nothing_finished(tmp_path, interleaved):
    proc = start(tmp_path, interleaved)
    try:
        wait_for_load(proc, "c", tmp_path)
        time.sleep(0.3)  # some records of c finish and flush the spool into the output
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "out.jsonl.gpt-simple" / "spool.jsonl").exists()
    got = check_nothing_lost_or_duplicated(tmp_path, finished_models={"a", "b"})
    assert len(got) < 3 * PER_MODEL  # it really was killed mid-run
    expected = reference(tmp_path, interleaved)
    for index, record in got.items():
        assert record == expected[index]


def test_sigterm_exits_143_and_keeps_the_spool(tmp_path, interleaved):
    proc = start(tmp_path, interleaved)
    try:
        wait_for_load(proc, "b", tmp_path)
        time.sleep(0.2)  # inside b's decode loop, most likely inside a forward call
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [e.get("event", "") for e in events]
    assert any("stopped (SIGTERM)" in n for n in names)
    spool = tmp_path / "out.jsonl.gpt-simple" / "spool.jsonl"
    kept = [e for e in events if "run ended early" in e.get("event", "")]
    assert kept and Path(kept[0]["spool"]) == spool
    assert spool.exists()
    got = check_nothing_lost_or_duplicated(tmp_path, finished_models={"a"})
    assert all("error" not in r for r in got.values()), "SIGTERM must not become record errors"
    assert not any(e.get("event") == "loading" and e["checkpoint"].endswith("/c") for e in events)
