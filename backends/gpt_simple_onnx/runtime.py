"""ONNX Runtime sessions: execution providers, threads, and the package conflict.

onnxruntime is imported inside the functions that need it, never at module import.

* Providers: the CPU provider by default; the CUDA provider when the device is ``cuda`` and
  ``onnxruntime-gpu`` is installed (its wheel carries both). A session that silently fell back
  to the CPU when CUDA was asked for is an error, not a slow surprise.
* Threads: intra-op threads from ``--threads``, else every CPU this process may use; one
  inter-op thread (the graph is a chain). Spinning is off: ORT's idle worker threads otherwise
  busy-wait between ops, which steals the cores of other processes on shared machines (and
  ORT's own throughput collapses when they steal back; ``shared/notes/cpu-and-onnx-facts.md``).
* ``onnxruntime`` and ``onnxruntime-gpu`` install the same ``onnxruntime`` package: with both
  installed the files of one overwrite the other's, and uninstalling either breaks the rest.
  :func:`package_conflict` detects it from the installed distributions' metadata.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt_simple.plugins import BackendError, Device, usable_cpus
from gpt_simple_onnx.versions import GPU_DISTRIBUTION, ort_distributions

if TYPE_CHECKING:
    import onnxruntime

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def available() -> bool:
    """Whether the ``onnxruntime`` package is importable (nothing is imported)."""
    return importlib.util.find_spec("onnxruntime") is not None


def gpu_package_installed() -> bool:
    return GPU_DISTRIBUTION in ort_distributions()


def package_conflict() -> str | None:
    """A sentence describing a broken install (two onnxruntime distributions), else None."""
    found = ort_distributions()
    if len(found) < 2:
        return None
    listed = ", ".join(f"{name} {version}" for name, version in found.items())
    return (
        f"{listed} are installed together: both ship the `onnxruntime` package and overwrite "
        f"each other's files, so which one runs is undefined. Uninstall both, then install "
        f"exactly one (pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
        f"'gpt-simple-inference[onnx]' or '[onnx-gpu]')"
    )


def describe() -> dict[str, Any]:
    """What ``gpt-simple backends`` shows for the onnx backend."""
    import onnxruntime as ort

    described: dict[str, Any] = {
        "onnxruntime": ", ".join(f"{n} {v}" for n, v in ort_distributions().items())
        or ort.__version__,
        "providers": ort.get_available_providers(),
    }
    conflict = package_conflict()
    if conflict:
        described["problem"] = conflict
    return described


def session_options(threads: int) -> onnxruntime.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    return options


class UnreadableGraph(BackendError):
    """ONNX Runtime cannot read the graph file itself (truncated, corrupt, not ONNX): for a
    cached export, a damaged entry to replace; the device's problems are other errors."""


def create_session(
    graph: Path, *, device: str | Device, threads: int | None
) -> tuple[onnxruntime.InferenceSession, int]:
    """An inference session for ``graph`` on ``device`` (``cpu``, ``cuda``, ``cuda:N``) and the
    intra-op thread count it uses."""
    import onnxruntime as ort

    device = Device(device)
    threads = threads or usable_cpus()
    if device.kind == "cuda":
        if CUDA_PROVIDER not in ort.get_available_providers():
            raise BackendError(
                f"device {device} needs onnxruntime-gpu, and this onnxruntime has only "
                f"{', '.join(ort.get_available_providers())}"
            )
        providers: list[Any] = [(CUDA_PROVIDER, {"device_id": device.index or 0}), CPU_PROVIDER]
    else:
        providers = [CPU_PROVIDER]
    try:
        session = ort.InferenceSession(
            str(graph), sess_options=session_options(threads), providers=providers
        )
    except Exception as exc:  # ORT raises its own exception types, all bare RuntimeError-likes
        raise UnreadableGraph(f"{graph}: ONNX Runtime cannot load the graph: {exc}") from None
    if providers[0] != CPU_PROVIDER and CUDA_PROVIDER not in session.get_providers():
        raise BackendError(
            f"device {device}: ONNX Runtime could not start its CUDA provider (no GPU visible, "
            f"or CUDA/cuDNN libraries missing) and fell back to the CPU; use --device cpu"
        )
    return session, threads
