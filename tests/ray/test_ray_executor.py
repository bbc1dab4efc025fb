"""The Ray executor on a local Ray cluster (issue 13): started by this module on loopback only
(two CPUs: two actors at a time), stopped at the end. The sweep's output equals the local
run's, also when an actor is killed mid-run. Run by ``nox -s ray``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.support.cli import run_toy_cli, subprocess_env, toy_cli_command, write_jsonl
from tests.support.toy_backend import write_toy_checkpoint

RAY = str(Path(sys.executable).with_name("ray"))
#: Ray replaces 127.0.0.1 with the machine's address and listens on every interface unless it
#: believes it runs a single-machine cluster: then it stays on loopback.
#: A cluster nobody else can reach needs no token (the driver would need it passed along).
LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(pids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets listening in ``pids``' processes (from ``ss``)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.add(line.split()[3].rsplit(":", 1)[0])
    return found


def _ray_pids(temp: Path) -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(temp) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.add(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    temp = tmp_path_factory.mktemp("ray")
    port = _free_port()
    paths = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "backends")])
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": paths}  # the workers import the toy backend
    start = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}"]
    start += ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    start += [f"--temp-dir={temp}"]
    started = subprocess.run(
        start, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield {"address": f"127.0.0.1:{port}", "env": env, "temp": temp}
    finally:
        subprocess.run(
            [RAY, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False
        )


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for name in "abc":
        write_toy_checkpoint(tmp_path / name, script=name * 3)
    records = []
    for i in range(36):
        model, generation = {"checkpoint": "abc"[i % 3]}, {"max_new_tokens": 2 + i % 3}
        records.append({"id": i, "prompt": "ab", "model": model, "generation": generation})
    write_jsonl(tmp_path / "sweep.jsonl", records)
    argv = ["batch-generate", "--input", "sweep.jsonl", "--output", "local.jsonl", "--seed", "5"]
    local = run_toy_cli(argv, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    return tmp_path


def on_ray(folder: Path, cluster: dict, *extra: str) -> list[str]:
    return toy_cli_command(
        "batch-generate",
        "--input",
        "sweep.jsonl",
        "--output",
        "ray.jsonl",
        "--seed",
        "5",
        "--executor",
        "ray",
        "--ray-address",
        cluster["address"],
        *extra,
    )


def test_the_cluster_listens_on_loopback_only(cluster):
    addresses = _listening_addresses(_ray_pids(cluster["temp"]))
    assert addresses, "no listening socket found for the cluster"
    assert addresses <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, addresses


def test_a_sweep_on_ray_writes_what_a_local_run_writes(sweep: Path, cluster):
    result = subprocess.run(
        on_ray(sweep, cluster),
        cwd=sweep,
        env=subprocess_env(**LOOPBACK),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("group sent to the cluster") == 3  # one actor per model group
    assert (sweep / "ray.jsonl").read_bytes() == (sweep / "local.jsonl").read_bytes()


def test_killing_an_actor_mid_run_still_gives_the_same_output(sweep: Path, cluster):
    proc = subprocess.Popen(
        on_ray(sweep, cluster),
        cwd=sweep,
        env=subprocess_env(TOY_DELAY="0.15", **LOOPBACK),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        killed = None
        while killed is None and time.monotonic() < deadline:
            workers = _group_workers()
            if workers and (sweep / "ray.jsonl").exists() and (sweep / "ray.jsonl").stat().st_size:
                try:
                    os.kill(workers[0], signal.SIGKILL)
                    killed = workers[0]
                except ProcessLookupError:
                    pass  # that actor finished its group just now: take the next one
            time.sleep(0.1)
        assert killed is not None, "no actor was decoding"
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert (sweep / "ray.jsonl").read_bytes() == (sweep / "local.jsonl").read_bytes()


def _group_workers() -> list[int]:
    """Pids of the actor processes (their title replaces their command line)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if _title(pid).startswith("ray::GroupWorker")]


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().strip()
    except OSError:
        return ""
