"""Installed versions of the tools an export depends on, read from package metadata.

Nothing here imports torch or onnxruntime: versions go into manifests and cache keys, which
the dry-run computes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: Distributions that ship the ``onnxruntime`` import package. Installing two of them makes
#: them overwrite each other's files; uninstalling one then breaks the other.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
GPU_DISTRIBUTION = "onnxruntime-gpu"
OUR_DISTRIBUTION = "gpt-simple-inference"


def distribution_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def ort_distributions() -> dict[str, str]:
    """The onnxruntime distributions installed, name -> version (more than one is broken)."""
    found = {name: distribution_version(name) for name in ORT_DISTRIBUTIONS}
    return {name: v for name, v in found.items() if v is not None}


def onnxruntime_version() -> str | None:
    """``name==version`` of the installed onnxruntime distribution(s), or None."""
    found = ort_distributions()
    return ", ".join(f"{name}=={v}" for name, v in found.items()) or None


def tool_versions() -> dict[str, str | None]:
    """What an export was made with (None: not installed)."""
    return {
        OUR_DISTRIBUTION: distribution_version(OUR_DISTRIBUTION),
        "torch": distribution_version("torch"),
        "onnx": distribution_version("onnx"),
        "onnxscript": distribution_version("onnxscript"),
        "onnxruntime": onnxruntime_version(),
    }
