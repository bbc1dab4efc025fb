"""``--backend onnx`` on gpt-simple checkpoints: exports made once into the cache, found by
content hash, safe against killed and concurrent exports; the dry-run never exports; a batch
can mix torch and onnx records on one checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpt_simple_onnx.export
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_onnx import layout
from gpt_simple_onnx.cache import (
    OWNER_FILE,
    TEMP_PREFIX,
    CacheKey,
    ONNXCache,
    content_hash,
    key_for,
)
from gpt_simple_onnx.plugin import OnnxBackend
from tests.conftest import REPO_ROOT
from tests.onnx.conftest import Exported
from tests.onnx.helpers import CPU, torch_model
from tests.support.cli import cli, run_batch, write_jsonl

pytestmark = pytest.mark.onnx

ON_DEMAND = "default"  # the architecture the session exports on demand, once


class ExportSpy:
    """Counts exports while letting them happen (or faking them with ``fake``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fake: Callable | None = None) -> None:
        self.calls: list[Path] = []
        real = gpt_simple_onnx.export.export_checkpoint

        def spy(info: CheckpointInfo, out: Path, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(out)
            return (fake or real)(info, out, *args, **kwargs)

        monkeypatch.setattr(gpt_simple_onnx.export, "export_checkpoint", spy)


@pytest.fixture(scope="session")
def on_demand(checkpoints: dict[str, CheckpointInfo], cache_root: Path) -> dict[str, Any]:
    """The first ``--backend onnx`` load of a gpt-simple checkpoint: it exports into the
    session's cache. Returns what the later tests compare against."""
    info = checkpoints[ON_DEMAND]
    backend = OnnxBackend(ONNXCache(cache_root))
    before = backend.preflight(info, CPU)
    model = backend.load(info, CPU)
    entry = Path(model.notes["export"])
    return {"preflight": before, "model": model, "entry": entry, "mtime": entry.stat().st_mtime_ns}


def fake_export_from(source: Path) -> Callable:
    """An export that copies an existing export folder (fast), as the real one writes it."""

    def write(info: CheckpointInfo, out: Path, options: Any, **kwargs: Any) -> dict:
        shutil.copytree(source, out, dirs_exist_ok=True)
        manifest = json.loads((out / layout.MANIFEST_FILE).read_text())
        manifest.update(kwargs.get("extra_manifest") or {})
        layout.write_json(out / layout.MANIFEST_FILE, manifest)
        return manifest

    return write


def test_the_first_run_exports_and_the_second_finds_the_cache(
    on_demand: dict[str, Any],
    checkpoints: dict[str, CheckpointInfo],
    cache_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = checkpoints[ON_DEMAND]
    (before,) = on_demand["preflight"].notes
    assert before.startswith("ONNX export: none cached yet, the run exports this checkpoint")
    assert str(cache_root) in before
    first, entry = on_demand["model"], on_demand["entry"]
    assert first.notes["export_cache"] == "exported"
    assert entry.parent == cache_root / "onnx" and entry.name.startswith(
        content_hash(info.weights)[:16] + "-fp32-opset20-"
    )
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp dir left
    manifest = json.loads((entry / layout.MANIFEST_FILE).read_text())
    assert manifest["cache_key"]["sha256"] == content_hash(info.weights)

    spy = ExportSpy(monkeypatch)
    backend = OnnxBackend()  # the cache from $GPT_SIMPLE_CACHE, as a new run would
    assert backend.preflight(info, CPU).notes == (f"ONNX export: cached ({entry})",)
    second = backend.load(info, CPU)
    assert spy.calls == [] and second.notes["export_cache"] == "cached"
    assert Path(second.notes["export"]) == entry and entry.stat().st_mtime_ns == on_demand["mtime"]
    ids = second.tokenizer.encode("The assert statement")
    expected = torch_model(info).forward([0], [ids])
    assert np.abs(second.forward([0], [ids]) - expected).max() <= 1e-4


def test_the_key_follows_the_content_not_the_path(
    on_demand: dict[str, Any], checkpoints: dict[str, CheckpointInfo], tmp_path: Path
) -> None:
    """A copy of the checkpoint elsewhere finds the same entry; other weights do not."""
    info = checkpoints[ON_DEMAND]
    copy = tmp_path / "copy"
    shutil.copytree(info.path, copy)
    copied = key_for(copy / "model" / "model.safetensors", dtype="fp32")
    assert ONNXCache().find(copied) == on_demand["entry"]
    other = key_for(checkpoints["mqa-relu"].weights, dtype="fp32")
    assert other.sha256 != copied.sha256 and ONNXCache().find(other) is None
    assert key_for(info.weights, dtype="fp16").name != copied.name


def test_the_content_hash_is_remembered_by_path_size_and_mtime(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"first version")
    root = tmp_path / "cache"
    real = content_hash(weights, root)
    index_path = root / "content-hashes.json"
    index = json.loads(index_path.read_text())
    assert index[str(weights)]["sha256"] == real
    index[str(weights)]["sha256"] = "remembered"  # prove the second call does not hash
    index_path.write_text(json.dumps(index))
    assert content_hash(weights, root) == "remembered"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert content_hash(weights, root) == real  # a touched file is hashed again


KILLED_EXPORT = """
import sys
from gpt_simple_lm_format import layout as gpt_simple_layout
from gpt_simple_onnx.plugin import OnnxBackend
info = gpt_simple_layout.inspect(__import__("pathlib").Path(sys.argv[1]), None, True)
OnnxBackend().cached_export(info, "fp32")
print("finished")
"""


def test_a_killed_export_is_not_a_cache_entry(
    exported: Exported,
    checkpoints: dict[str, CheckpointInfo],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An export process killed mid-way leaves its temp dir only: not found as an entry, and
    removed by the next export, which installs a complete entry."""
    info = checkpoints["mqa-relu"]
    cache = ONNXCache(tmp_path / "cache")
    env = {**os.environ, "GPT_SIMPLE_CACHE": str(cache.root), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "backends")])
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, str(info.path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(cache.folder.glob(f"{TEMP_PREFIX}*/{OWNER_FILE}")):
            assert process.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.05)
        time.sleep(0.5)  # well inside the export (several seconds), past the owner file
    finally:
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL  # reaped: its pid is gone
    (temp,) = cache.folder.iterdir()
    assert temp.name.startswith(TEMP_PREFIX) and not (temp / layout.MANIFEST_FILE).exists()
    key = key_for(info.weights, dtype="fp32", root=cache.root)
    assert cache.find(key) is None and cache.find(key, any_versions=True) is None
    assert OnnxBackend(cache).preflight(info, CPU).notes[0].startswith("ONNX export: none cached")

    spy = ExportSpy(monkeypatch, fake=fake_export_from(exported("mqa-relu").path))
    folder, origin = OnnxBackend(cache).cached_export(info, "fp32")
    assert origin == "exported" and len(spy.calls) == 1
    assert not temp.exists() and sorted(cache.folder.iterdir()) == [folder]
    assert cache.find(key) == folder


def write_temp(cache: ONNXCache, name: str, owner: dict | None, age: float = 0) -> Path:
    temp = cache.folder / f"{TEMP_PREFIX}{name}"
    temp.mkdir(parents=True)
    if owner is not None:
        (temp / OWNER_FILE).write_text(json.dumps(owner))
    then = time.time() - age
    os.utime(temp, (then, then))
    return temp


def test_which_leftover_temp_dirs_are_removed(tmp_path: Path) -> None:
    import socket

    cache = ONNXCache(tmp_path)
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    mine = write_temp(cache, "mine", {"host": host, "pid": os.getpid()})
    gone = write_temp(cache, "gone", {"host": host, "pid": int(dead.stdout)})
    elsewhere = write_temp(cache, "elsewhere", {"host": host + "-other", "pid": 1})
    old_elsewhere = write_temp(cache, "old", {"host": host + "-other", "pid": 1}, age=2 * 86400)
    ownerless = write_temp(cache, "ownerless", None)
    old_ownerless = write_temp(cache, "old-ownerless", None, age=7200)
    removed = cache.remove_stale_temps()
    assert sorted(removed) == sorted([gone, old_elsewhere, old_ownerless])
    assert all(p.exists() for p in (mine, elsewhere, ownerless))


def test_a_concurrent_export_that_finishes_first_wins(
    exported: Exported, checkpoints: dict[str, CheckpointInfo], tmp_path: Path
) -> None:
    """Two runs exporting one key: the second rename fails, its copy is discarded and the
    first's entry is used; nothing half-written is ever visible under the entry's name."""
    info = checkpoints["mqa-relu"]
    cache = ONNXCache(tmp_path)
    key = key_for(info.weights, dtype="fp32", root=tmp_path)
    write = fake_export_from(exported("mqa-relu").path)
    extra = {"extra_manifest": {"cache_key": key.as_dict()}}

    def racing(temp: Path) -> None:
        write(info, temp, None, **extra)
        # meanwhile another run installs its entry
        cache.export(key, lambda other: write(info, other, None, **extra))
        winner = cache.entry(key)
        (winner / "winner").touch()

    folder = cache.export(key, racing)
    assert folder == cache.entry(key) and (folder / "winner").exists()
    assert sorted(cache.folder.iterdir()) == [folder]


def test_an_entry_for_other_weights_is_never_a_hit(
    exported: Exported, checkpoints: dict[str, CheckpointInfo], tmp_path: Path
) -> None:
    info = checkpoints["mqa-relu"]
    cache = ONNXCache(tmp_path)
    key = key_for(info.weights, dtype="fp32", root=tmp_path)
    wrong = CacheKey("0" * 64, "fp32", None, key.opset, key.versions)
    write = fake_export_from(exported("mqa-relu").path)
    cache.folder.mkdir(parents=True)
    write(info, cache.entry(key), None, extra_manifest={"cache_key": wrong.as_dict()})
    assert cache.find(key) is None  # the folder name matches, its manifest does not


def test_the_dry_run_says_export_needed_or_cached_and_never_exports(
    on_demand: dict[str, Any],
    checkpoints: dict[str, CheckpointInfo],
    cache_root: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = ExportSpy(monkeypatch)
    cached, fresh = checkpoints[ON_DEMAND], checkpoints["layernorm-mlp-gelu-ntk"]
    records = [
        {"prompt": "a", "model": {"checkpoint": str(cached.path), "backend": "onnx"}},
        {"prompt": "b", "model": {"checkpoint": str(fresh.path), "backend": "onnx"}},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    entries = sorted(cache_root.joinpath("onnx").iterdir())
    code, plan, _ = cli(capsys, "batch-generate", "--input", str(source), "--dry-run")
    assert code == 0
    assert f"note: ONNX export: cached ({on_demand['entry']})" in plan
    fresh_entry = ONNXCache().entry(key_for(fresh.weights, dtype="fp32"))
    assert "note: ONNX export: none cached yet, the run exports this checkpoint first " in plan
    assert f"(into {fresh_entry})" in plan
    assert spy.calls == [] and sorted(cache_root.joinpath("onnx").iterdir()) == entries


def test_a_batch_mixes_torch_and_onnx_records_on_one_checkpoint(
    on_demand: dict[str, Any],
    checkpoints: dict[str, CheckpointInfo],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path = str(checkpoints[ON_DEMAND].path)
    prompts = ["The assert statement", "Objects are"]
    records = [
        {"prompt": prompt, "model": {"checkpoint": path, "backend": backend}}
        for prompt in prompts
        for backend in ("torch", "onnx")
    ]
    code, out, stderr = run_batch(
        capsys, tmp_path, records, "--greedy", "--max-new-tokens", "12", "--threads", "1"
    )
    assert code == 0, stderr
    assert [r["meta"]["backend"] for r in out] == ["torch", "onnx"] * 2
    assert all("completion" in r for r in out)
    assert (
        out[0]["completion"] == out[1]["completion"]
        and out[2]["completion"] == out[3]["completion"]
    )
    onnx_meta = out[1]["meta"]
    assert onnx_meta["notes"]["export_cache"] == "cached"
    assert onnx_meta["notes"]["provider"] == "CPUExecutionProvider"


def test_a_damaged_cache_entry_is_replaced_not_reused(
    exported: Exported,
    checkpoints: dict[str, CheckpointInfo],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry whose graph cannot be read (a copy cut short, a disk fault) would fail every
    later run: the load says so, removes it and exports again, once."""
    info = checkpoints["mqa-relu"]
    cache = ONNXCache(tmp_path / "cache")
    spy = ExportSpy(monkeypatch, fake=fake_export_from(exported("mqa-relu").path))
    entry, _ = OnnxBackend(cache).cached_export(info, "fp32")
    graph = entry / layout.MODEL_FILE
    graph.write_bytes(graph.read_bytes()[:200])  # cut short
    model = OnnxBackend(cache).load(info, CPU)
    assert len(spy.calls) == 2 and model.notes["export_cache"] == "exported"
    assert sorted(cache.folder.iterdir()) == [entry]  # the damaged copy is gone
    ids = model.tokenizer.encode("The assert statement")
    assert np.abs(model.forward([0], [ids]) - torch_model(info).forward([0], [ids])).max() <= 1e-4


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_an_export_stops_the_run(
    checkpoints: dict[str, CheckpointInfo], tmp_path: Path, signum: int, status: int
) -> None:
    """A signal while the export runs (inside torch's exporter, which wraps errors) stops the
    run with the signal's status; it is never a record error that lets the run go on."""
    info = checkpoints["mqa-relu"]
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    env = {**os.environ, "GPT_SIMPLE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "backends")])
    env.pop("GPT_SIMPLE_PLUGINS", None)  # every installed plugin, as a user runs it
    command = [sys.executable, "-m", "gpt_simple_core.cli.main", "batch-generate", "--input",
               str(source), "--checkpoint", str(info.path), "--backend", "onnx",
               "--output", str(tmp_path / "out.jsonl")]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if "export: tracing the graph" in line:
            time.sleep(0.5)  # inside torch.onnx.export
            process.send_signal(signum)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=120) == status, "".join(seen) + rest
    assert "record failed" not in rest and "Traceback" not in rest
    assert (tmp_path / "out.jsonl").read_text() == ""
    leftovers = list((tmp_path / "cache" / "onnx").iterdir())
    assert all(p.name.startswith(TEMP_PREFIX) for p in leftovers)  # no entry was installed
