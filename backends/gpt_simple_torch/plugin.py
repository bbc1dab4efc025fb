"""The PyTorch eager backend: runs gpt-simple trainer checkpoints.

This module is what the ``gpt_simple`` entry point loads, so it must stay cheap: it never
imports torch at import time (``gpt-simple --help`` and dry-runs stay torch-free). torch is
imported when a request is resolved or a model is loaded.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import structlog

from gpt_simple.plugins import (
    AUTO,
    OVERFLOW_EXTRAPOLATE,
    OVERFLOW_TRUNCATE,
    Backend,
    CheckpointError,
    Device,
    LoadedModel,
    LoadRequest,
    Preflight,
    PreflightProblem,
    Tokenizer,
    hookimpl,
    usable_cpus,
)
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_lm_format.layout import FORMAT
from gpt_simple_lm_format.tokenizer import HFTokenizer

if TYPE_CHECKING:
    from types import ModuleType

    import numpy as np

    from gpt_simple.plugins import CheckpointInfo
    from gpt_simple_torch.model import GPT

GPT_SIMPLE_PLUGIN_API = 1
#: The format plugin that claims the checkpoints this backend runs.
GPT_SIMPLE_PLUGIN_REQUIRES = ("gpt-simple-lm",)

log = structlog.get_logger(__name__)

#: Share of the free GPU memory the KV cache and activations may take (the rest: the
#: allocator's fragmentation and whatever else runs on the GPU).
GPU_MEMORY_SHARE = 0.8

FP16_ON_CPU = (
    "fp16 on the CPU is refused by the torch backend: CPUs without native half-precision "
    "arithmetic convert it to fp32 in every kernel (about 2x slower than fp32 here), and fp16's "
    "range (max 65504) can overflow activations of a model trained in fp32/bf16; use fp32 (or "
    "bf16) on the CPU, or run fp16 on a GPU (--device cuda)"
)


def _import_torch() -> ModuleType:
    """Import torch, first asking its OpenMP runtime not to spin.

    With the default (active) wait policy, idle OpenMP threads spin at barriers; when another
    process holds one of the cores, a decode step measured 15-40x slower on a 2-CPU machine.
    PASSIVE threads sleep instead and the same contention costs 1.2-2x
    (shared/notes/cpu-and-onnx-facts.md). libgomp reads the variable once, when torch loads
    it, so it only helps if torch is not imported yet; a user's own setting wins. When torch
    came first (a notebook, a script importing it before gpt_simple) it is too late: say so
    once, with the fix.
    """
    global _late_warned
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    elif "OMP_WAIT_POLICY" not in os.environ and not _late_warned:
        _late_warned = True
        log.warning(
            "torch was imported before gpt-simple, so its OpenMP threads spin while waiting: "
            "if another process holds a core, decoding can slow down 15-40x; set "
            "OMP_WAIT_POLICY=PASSIVE in the environment (or import gpt_simple first)"
        )
    import torch

    return torch


_late_warned = False


def default_threads() -> int:
    """Intra-op threads when the request names none.

    Every usable CPU (:func:`usable_cpus`), or fewer when ``OMP_NUM_THREADS`` asks for fewer.
    We do not try to guess how busy the machine is (a load average is stale and counts us
    too): with the PASSIVE wait policy set by :func:`_import_torch`, sharing cores with other
    processes degrades throughput gracefully instead of collapsing.
    """
    cpus = usable_cpus()
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return cpus
    return max(1, min(asked, cpus))


def torch_build() -> dict[str, str | None]:
    """What the installed torch was built for (``cuda``, ``hip``, ``__version__``), read from
    its ``version.py`` without importing torch; empty when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return {}
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return {}
    found: dict[str, str | None] = {}
    for key in ("__version__", "cuda", "hip"):
        match = re.search(rf"^{key}\b[^=]*=\s*(.+)$", text, re.MULTILINE)
        value = match.group(1).strip().strip("'\"") if match else None
        found[key] = None if value in (None, "None") else value
    return found


def _gpu_absent(build: Mapping[str, str | None]) -> str | None:
    """Why torch cannot run on ``cuda`` here, when that is certain without importing it."""
    if not build:
        return None  # torch missing: the dependency check says so
    if build.get("cuda") is None and build.get("hip") is None:
        return f"the installed torch {build.get('__version__')} is a CPU-only build"
    if "torch" in sys.modules:  # imported already (run time): ask it
        torch = sys.modules["torch"]
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
    return None


def _gpu_index_problem(device: Device) -> str | None:
    """``cuda:N`` past the devices torch sees (only known once torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None or device.index is None or not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    if device.index >= count:
        return f"{device} does not exist: torch sees {count} CUDA device(s) (cuda:0..{count - 1})"
    return None


def _auto_device_is_cpu(build: Mapping[str, str | None]) -> bool:
    """Whether ``auto`` will certainly resolve to the CPU (no CUDA build, not an Apple GPU)."""
    apple = sys.platform == "darwin" and platform.machine() == "arm64"
    return bool(build) and _gpu_absent(build) is not None and not apple


class TorchBackend(Backend):
    """PyTorch eager: the default backend for gpt-simple checkpoints (CPU, CUDA, MPS)."""

    name: ClassVar[str] = "torch"
    formats: ClassVar[Mapping[str, str]] = {FORMAT: AUTO}
    priority: ClassVar[int] = 100
    dtypes: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "mps")
    context_overflow: ClassVar[tuple[str, ...]] = (OVERFLOW_EXTRAPOLATE, OVERFLOW_TRUNCATE)
    requires: ClassVar[tuple[str, ...]] = ("torch", "safetensors")
    extra: ClassVar[str | None] = "torch"

    def preflight(self, checkpoint: CheckpointInfo, request: LoadRequest) -> Preflight:
        """Device and dtype combinations, decided without importing torch where that is
        certain (a CPU-only torch build is read from its version file)."""
        problems: list[PreflightProblem] = []
        warnings: list[str] = []
        build = torch_build()
        device = request.device
        if device.kind == "cuda":
            absent = _gpu_absent(build) or _gpu_index_problem(device)
            if absent is not None:
                problems.append(
                    PreflightProblem(
                        f"cannot run on {device}: {absent} (use --device cpu)", "--device"
                    )
                )
        on_cpu = device.kind == "cpu" or (device.is_auto and _auto_device_is_cpu(build))
        if request.dtype == "fp16" and on_cpu:
            where = "" if device.kind == "cpu" else " (device auto is the CPU here: no GPU)"
            problems.append(PreflightProblem(FP16_ON_CPU + where, "model.dtype"))
        elif request.dtype == "fp16" and device.is_auto:
            # A CUDA build: whether a GPU is there is known once torch is imported (run time).
            warnings.append(
                "fp16 needs a GPU: if none is found at run time the load fails "
                "(fp32 runs everywhere)"
            )
        return Preflight(problems, warnings)

    def resolve(self, request: LoadRequest) -> LoadRequest:
        """``auto`` device: cuda, else mps, else cpu. ``auto`` dtype: fp32 on the CPU (fast and
        exact there), bf16 on CUDA GPUs that support it (fp32's range) else fp16, fp16 on mps."""
        torch = _import_torch()
        device: str = request.device
        if request.device.is_auto:
            if torch.cuda.is_available():
                device = "cuda"
            elif torch.backends.mps.is_available():
                device = "mps"
            else:
                device = "cpu"
        dtype = request.dtype
        if dtype == AUTO:
            kind = Device(device).kind
            if kind == "cuda":
                dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            elif kind == "mps":
                dtype = "fp16"
            else:
                dtype = "fp32"
        return attrs.evolve(request, device=device, dtype=dtype)

    def adopt(self, model: Any, tokenizer: Any) -> TorchModel | None:
        """Wrap a :class:`GPT` a user got from ``load_for_inference`` for ``generate``."""
        if "torch" not in sys.modules:  # no torch imported: it cannot be one of our modules
            return None
        import torch

        from gpt_simple_torch.model import GPT

        if not isinstance(model, GPT):
            return None
        return TorchModel.from_module(model, tokenizer, notes={"threads": torch.get_num_threads()})

    def load(self, checkpoint: CheckpointInfo, request: LoadRequest) -> TorchModel:
        request = self.resolve(request)  # the core passes it resolved; a no-op then
        if checkpoint.weights is None or checkpoint.tokenizer is None:
            raise CheckpointError(f"{checkpoint.path}: no weights or no tokenizer to load")
        torch = _import_torch()
        from gpt_simple_torch.loading import load_model, store_matrices_transposed

        threads = request.threads or default_threads()
        torch.set_num_threads(threads)  # process-wide: the last model loaded decides
        config = ModelConfig.from_dict(checkpoint.config, source=str(checkpoint.path))
        module = load_model(checkpoint.weights, config, dtype=request.dtype, device=request.device)
        store_matrices_transposed(module)
        model = TorchModel.from_module(
            module,
            HFTokenizer(checkpoint.tokenizer),
            context_overflow=request.context_overflow or OVERFLOW_EXTRAPOLATE,
            notes={"threads": threads, "weights": checkpoint.weights.name},
        )
        if request.device.kind == "cuda":
            model.memory_budget = gpu_memory_budget(torch, request.device)
        return model


def gpu_memory_budget(torch: ModuleType, device: str) -> int:
    """Bytes the core may plan KV cache and activations with on a GPU: a share of what is
    free there after the weights loaded (host RAM says nothing about it)."""
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free * GPU_MEMORY_SHARE)


def activation_bytes_per_token(config: ModelConfig, dtype_bytes: int) -> int:
    """Transient bytes one token of a forward call needs: hidden states, q/k/v and the MLP's
    intermediates in the model dtype, plus fp32 attention scores over the trained context."""
    hidden = 6 * config.n_embd + 3 * config.ffn_size
    return dtype_bytes * hidden + 4 * config.n_head * config.n_positions


class TorchModel(LoadedModel):
    """A :class:`~gpt_simple_torch.model.GPT` driven by the core's decode loop.

    KV cache: one :class:`~gpt_simple_torch.model.KVCache` for all rows. A call writes only
    the new tokens of its rows in place and attends over ``cache[slots, :, :longest]``, which
    is a view when the slots are a contiguous run (scattered slots would cost a gather of
    every cached key and value, in every layer, at every step). So the core's row ids map to
    cache slots kept packed: a new row takes the next slot after the live ones, and releasing
    a row moves the last live row into its hole (one row's cache copied once). Every decode
    step of all live rows, and every prefill of newly admitted rows, then reads a view. Rows
    are right-padded to the longest new chunk of the call, every token keeps its row's true
    position, and the mask hides padding and stale positions. One-token rows (decoding) and
    longer chunks (prompts) run as two batches, so a long prompt joining the batch does not pad
    every decoding row to its length.

    Past ``context_length``: with ``extrapolate`` (the default, like the trainer) RoPE keeps
    counting and the cache keeps growing; with ``truncate`` the row is recomputed from scratch
    over its last ``context_length`` tokens, which equals a fresh forward over that window
    (and costs a full window per step once a row is that long).
    """

    def __init__(
        self,
        module: GPT,
        tokenizer: Tokenizer,
        *,
        context_overflow: str = OVERFLOW_EXTRAPOLATE,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        from gpt_simple_torch.loading import DTYPE_NAMES
        from gpt_simple_torch.model import KVCache

        weight = module.wte.weight
        self.module = module
        self.config: ModelConfig = module.config
        self.tokenizer = tokenizer
        self.dtype = DTYPE_NAMES.get(weight.dtype, str(weight.dtype))
        self.device = str(weight.device)
        self.context_length = self.config.n_positions
        self.context_overflow = context_overflow
        self.notes = dict(notes or {})
        self._cache = KVCache(self.config, dtype=weight.dtype, device=weight.device)
        # What the core sizes its batches with (protocol.LoadedModel).
        self.kv_bytes_per_token = self.config.kv_bytes_per_token(weight.element_size())
        self.activation_bytes_per_token = activation_bytes_per_token(
            self.config, weight.element_size()
        )
        # Token ids per row, kept only to recompute a truncated window.
        self._history: dict[int, list[int]] = {}
        self._slot: dict[int, int] = {}  # the core's row id -> its cache slot
        self._row_at: list[int] = []  # cache slot -> row id; live slots are 0..len-1

    @classmethod
    def from_module(
        cls,
        module: GPT,
        tokenizer: Tokenizer,
        *,
        context_overflow: str = OVERFLOW_EXTRAPOLATE,
        notes: Mapping[str, Any] | None = None,
    ) -> TorchModel:
        """Wrap a loaded :class:`GPT` (e.g. one ``load_for_inference`` gave a user) for the
        core's decode loop; puts it in eval mode. Nothing is copied."""
        module.eval()
        return cls(module, tokenizer, context_overflow=context_overflow, notes=notes)

    def public_model(self) -> GPT:
        """The ``nn.Module``, as the trainer's ``load_for_inference`` returned it."""
        return self.module

    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        self.check_forward_arguments(rows, tokens)
        import numpy as np  # here, not at the top: a dry-run imports this plugin, never numpy

        feed = [self._window(row, list(new)) for row, new in zip(rows, tokens, strict=True)]
        slots = [self._slot_of(row) for row in rows]
        out = np.empty((len(rows), self.config.vocab_size), dtype=np.float32)
        decoding = [i for i, new in enumerate(feed) if len(new) == 1]
        prefilling = [i for i, new in enumerate(feed) if len(new) > 1]
        for group in (decoding, prefilling):
            if not group:
                continue
            group.sort(key=lambda i: slots[i])  # ascending slots: the cache is read as a view
            logits = self.module.step(
                self._cache, [slots[i] for i in group], [feed[i] for i in group]
            )
            out[group] = logits.float().cpu().numpy()
        return out

    copies_rows = True

    def copy_row(self, source: int, targets: Sequence[int]) -> None:
        """Copy ``source``'s cached keys and values (and, under ``truncate``, its history)."""
        length = self.cached_length(source)
        for target in targets:
            slot = self._slot_of(target)
            self._cache.reserve(slot + 1, length)
            self._cache.move(self._slot[source], slot)
            if source in self._history:
                self._history[target] = list(self._history[source])

    def forward_all(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> list:
        """The logits after every new token, in one call per row. Under ``truncate`` a row
        past the context recomputes a window, whose positions are not the new tokens': that
        case goes one token at a time (the protocol's default)."""
        self.check_forward_arguments(rows, tokens)
        if self.context_overflow == OVERFLOW_TRUNCATE:
            return super().forward_all(rows, tokens)
        out = []
        for row, new in zip(rows, tokens, strict=True):
            logits = self.module.step(self._cache, [self._slot_of(row)], [list(new)], True)
            out.append(logits[0].float().cpu().numpy())
        return out

    def _slot_of(self, row: int) -> int:
        """``row``'s cache slot; a new row takes the next slot after the live ones."""
        slot = self._slot.get(row)
        if slot is None:
            slot = self._slot[row] = len(self._row_at)
            self._row_at.append(row)
        return slot

    def cached_length(self, row: int) -> int:
        """Tokens of ``row`` in the cache (0 for a row not seen since its release)."""
        slot = self._slot.get(row)
        return 0 if slot is None else self._cache.lengths[slot]

    def _window(self, row: int, new: list[int]) -> list[int]:
        """The tokens to run for ``row``: ``new``, or under ``truncate`` a whole recomputed
        window when the row would grow past ``context_length``."""
        if self.context_overflow != OVERFLOW_TRUNCATE:
            return new
        history = self._history.setdefault(row, [])
        history.extend(new)
        limit = self.context_length
        if len(history) <= limit:
            return new
        del history[:-limit]
        if row in self._slot:
            self._cache.release(self._slot[row])
        return list(history)

    def reserve(self, rows: int, max_tokens: int) -> None:
        """Allocate the cache for ``rows`` rows of ``max_tokens`` once, instead of growing
        it (each growth copies the whole cache) while the first rows decode."""
        limit = self.context_length if self.context_overflow == OVERFLOW_TRUNCATE else None
        self._cache.reserve(rows, min(max_tokens, limit) if limit else max_tokens)

    def release(self, rows: Sequence[int]) -> None:
        for row in rows:
            self._history.pop(row, None)
            slot = self._slot.pop(row, None)
            if slot is None:
                continue
            last = len(self._row_at) - 1
            if slot != last:  # keep live slots packed: the last live row fills the hole
                moved = self._row_at[last]
                self._cache.move(last, slot)
                self._row_at[slot] = moved
                self._slot[moved] = slot
            self._cache.release(last)
            self._row_at.pop()

    def close(self) -> None:
        device = self.device
        self._cache = None
        self.module = None
        self._history.clear()
        self._slot.clear()
        self._row_at.clear()
        if device.startswith("cuda"):
            _import_torch().cuda.empty_cache()


@hookimpl
def gpt_simple_register_backends(register: Callable[[Backend], None]) -> None:
    register(TorchBackend())
