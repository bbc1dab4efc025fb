"""The machine a benchmark ran on, the load other processes put on it while it ran, and the
processes the suite starts (each tool in its own, with a clean environment).

Background load is measured, not guessed: ``/proc/stat`` counts the CPU time every process of
the machine used; the suite's own tools are its children, whose CPU time
``getrusage(RUSAGE_CHILDREN)`` reports once they have exited. Background = machine busy time
minus the tool's, over the tool's wall time, in cores (0.0: quiet; 1.0: one core's worth of
other work). A core kept busy on purpose (the contention scenario) counts as background.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_core.cpus import usable_cpus

REPO = Path(__file__).resolve().parent.parent
#: Variables that would carry one tool's thread settings into another's process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")
VERSIONS = ("gpt-simple-inference", "torch", "transformers", "onnxruntime", "numpy", "tokenizers")


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user..steal; guest time is already inside user
    return (total - idle) / ticks, total / ticks


def children_cpu() -> float:
    """CPU seconds used by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def background_cores(seconds: float = 3.0) -> float:
    """Cores' worth of work other processes do right now (sampled over ``seconds``)."""
    busy0, _ = cpu_times()
    mine0 = _own_cpu()
    time.sleep(seconds)
    busy1, _ = cpu_times()
    return max(0.0, (busy1 - busy0 - (_own_cpu() - mine0)) / seconds)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + children_cpu()


@attrs.frozen
class Measured:
    """One tool run: its answer (the JSON line it printed, if any) and what it cost."""

    wall: float
    cpu: float  # the tool's own CPU seconds
    background: float  # other processes' load meanwhile, in cores
    returncode: int
    answer: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def tool_env(**extra: str) -> dict[str, str]:
    """A clean environment for a tool: this checkout importable, no inherited thread knobs."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    paths = [str(REPO), str(REPO / "backends")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_tool(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log: Path | None = None,
) -> Measured:
    """Run ``argv`` (a fresh interpreter) to completion and measure it.

    The last stdout line that parses as a JSON object is the tool's answer. stderr (and stdout)
    are appended to ``log`` when given. A tool past ``timeout`` is killed: returncode -9.
    """
    busy0, _ = cpu_times()
    cpu0 = children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else tool_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = -9
        stdout = _text(exc.stdout)
        stderr = _text(exc.stderr) + f"\n[killed after {timeout:.0f} s]"
    wall = time.perf_counter() - start
    busy1, _ = cpu_times()
    cpu = children_cpu() - cpu0
    background = max(0.0, (busy1 - busy0 - cpu) / wall) if wall > 0 else 0.0
    if log is not None:
        with log.open("a", encoding="utf-8") as out:
            out.write(f"$ {' '.join(argv)}\n[rc {returncode}, {wall:.1f} s]\n{stdout}{stderr}\n")
    return Measured(wall, cpu, background, returncode, _answer(stdout), stdout, stderr)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _answer(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


class BusyCore:
    """Another process keeping one core busy (a pure-Python spin loop), for as long as the
    ``with`` block lasts."""

    def __enter__(self) -> BusyCore:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # let it get going
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def machine_info() -> dict[str, Any]:
    """CPU model and features, CPUs, memory, OS, Python, versions, and the checkout's commit."""
    info: dict[str, Any] = {
        "cpu": _cpuinfo_value("model name") or platform.processor() or "unknown",
        "cpu_features": _cpu_features(),
        "cpus_online": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in VERSIONS},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    return info


def _cpuinfo_value(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_features() -> list[str]:
    """The vector/matrix features that decide CPU matmul speed."""
    flags = set((_cpuinfo_value("flags") or "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni")
    return [flag for flag in wanted if flag in flags]


def _meminfo_kib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()
