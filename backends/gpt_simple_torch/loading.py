"""Reading a gpt-simple checkpoint's weights into a :class:`~gpt_simple_torch.model.GPT`.

Weights are memory-mapped (safetensors natively, the trainer's ``pytorch_model.bin`` through
``torch.load(mmap=True)``), checked key by key against the model config, cast and moved one
tensor at a time and assigned to a module built on the ``meta`` device. Host memory therefore
peaks near one copy of the weights (file pages that the kernel may drop again), not the two or
three of "initialise, load, copy".
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from gpt_simple.plugins import CheckpointError
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_lm_format.layout import (
    COMPILE_PREFIX,
    SAFETENSORS,
    describe_state_dict_mismatch,
)
from gpt_simple_torch.model import GPT, CausalSelfAttention, FusedLinears, GatedMLP

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` or ``pytorch_model.bin``, memory-mapped.

    A ``.bin`` is read with ``weights_only=True``: a file that needs more than tensors and
    plain containers (a pickled class, a function) is refused instead of executed.
    """
    if path.name == SAFETENSORS or path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{path}: cannot read safetensors weights: {exc}") from None
    try:
        loaded = _torch_load(path)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: loading it would need arbitrary unpickling, which can run code "
            f"from the file ({_unpickling_reason(exc)}). Only plain state dicts of tensors are "
            f"accepted: re-save it with torch.save(model.state_dict(), ...) or as "
            f"model.safetensors"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read PyTorch weights: {exc}") from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise CheckpointError(
            f"{path}: expected a state dict (names -> tensors), found {type(loaded).__name__}"
        )
    return dict(loaded)


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """The useful line of torch's long weights-only message: which global was refused."""
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"it references {match.group(1)}"
    lines = [line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line]
    return lines[0] if lines else (text.strip().splitlines() or [type(exc).__name__])[0]


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        # Files from torch < 1.6 (legacy, non-zip format) cannot be memory-mapped: read them.
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: ModelConfig, source: Path | str
) -> dict[str, torch.Tensor]:
    """Strip ``_orig_mod.`` (torch.compile) and require exactly the keys and shapes the config
    implies; the error names every missing, unexpected and mis-shaped key (first few)."""
    stripped = {key.removeprefix(COMPILE_PREFIX): value for key, value in state_dict.items()}
    found = {key: tuple(value.shape) for key, value in stripped.items()}
    problems = describe_state_dict_mismatch(config.state_dict_shapes(), found)
    if problems:
        raise CheckpointError(f"{source} does not match its model config: {problems}")
    not_float = sorted(key for key, value in stripped.items() if not value.is_floating_point())
    if not_float:
        names = ", ".join(not_float[:8])
        raise CheckpointError(f"{source}: tensors {names} are not floating point")
    return stripped


def load_model(
    weights: Path,
    config: ModelConfig,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
) -> GPT:
    """Load ``weights`` (``model.safetensors`` or ``pytorch_model.bin``) as an eval-mode
    :class:`GPT` in ``dtype`` on ``device``, gradients off."""
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    state_dict = check_state_dict(read_state_dict(weights), config, weights)
    # One tensor at a time, each replacing its mapped original: the converted weights are the
    # only copy in process memory. .to() returns the mapped tensor itself when nothing changes
    # (fp32 on the CPU), so then the model runs straight from the page cache.
    for key in list(state_dict):
        state_dict[key] = state_dict[key].to(device=device, dtype=torch_dtype)
    model = GPT.from_state_dict(config, state_dict)
    model.eval()
    model.requires_grad_(False)
    return model


def store_matrices_transposed(model: GPT) -> None:
    """On the CPU, store every matrix that multiplies activations as ``[in, out]`` in memory,
    keeping each ``weight`` its usual ``[out, in]`` shape (a transposed view): same values,
    same ``state_dict`` shapes, other strides.

    Why: a decode step multiplies one row per sequence by every weight, so at small batches it
    is a matrix-vector product bound by how fast the weights stream from memory. For
    ``x @ W.T`` with ``W`` stored ``[out, in]``, MKL's kernel read weights at 11-15 GB/s on the
    benchmark machine, and at 24-26 GB/s with ``W.T`` stored contiguously (a plain reduction:
    28-30 GB/s); see docs/performance.md. Larger batches are compute-bound and unaffected.
    Matrices that read the same input (q/k/v, gate/up) are stored side by side as one
    :class:`~gpt_simple_torch.model.FusedLinears`, each linear's weight a view into it.

    Largest matrix first, and the mapped file pages of each original are handed back to the
    kernel once its copy exists, so host memory still peaks near one copy of the weights.
    Only for a module :func:`load_model` just returned: the originals' pages are dropped, so
    nothing else may hold (and later read) those tensors.
    """
    if model.wte.weight.device.type != "cpu":
        return
    owners = [m for m in model.modules() if isinstance(m, (CausalSelfAttention, GatedMLP))]
    grouped = {id(linear) for owner in owners for linear in owner.fusable()}
    targets: list[tuple[nn.Module, str]] = [
        (m, "weight")
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and id(m) not in grouped
    ]
    if model.lm_head is None:  # tied: the embedding matrix is also the head
        targets.append((model.wte, "weight"))
    work: list[tuple[int, Callable[[], None]]] = [
        (getattr(module, name).numel(), functools.partial(_relay, module, name))
        for module, name in targets
    ]
    work += [
        (sum(linear.weight.numel() for linear in owner.fusable()), functools.partial(_fuse, owner))
        for owner in owners
    ]
    for _, relay in sorted(work, key=lambda item: item[0], reverse=True):
        relay()


def _relay(module: nn.Module, name: str) -> None:
    """One matrix stored transposed, its original's pages handed back."""
    original = getattr(module, name)
    relaid = original.detach().t().contiguous().t()
    setattr(module, name, torch.nn.Parameter(relaid, requires_grad=False))
    _release_mapped_pages(original)


def _fuse(owner: CausalSelfAttention | GatedMLP) -> None:
    """q/k/v (or gate/up) stored as one transposed matrix, each linear a view into it."""
    owner.fused = FusedLinears(owner.fusable(), release=_release_mapped_pages)


def _release_mapped_pages(tensor: torch.Tensor) -> None:
    """Hand back the resident pages of ``tensor``, which nothing reads again. In the fp32 CPU
    case it is a slice of the memory-mapped weights file, whose mapping stays alive while any
    other tensor of the file is used, so dropping the reference alone would keep its pages
    resident. Only pages wholly inside ``tensor`` are dropped; the file is unchanged."""
    if sys.platform != "linux":
        return
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    first, last = -(-start // page) * page, (start + tensor.nbytes) // page * page
    if last > first:
        _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


_MADV_DONTNEED = 4


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
