"""The ONNX plugin: the ``onnx`` backend, the ``onnx`` exporter, and detection of export folders.

What the ``gpt_simple`` entry point loads, so it stays cheap: importing it imports neither
onnxruntime nor torch. Planning (and the dry-run) reads manifests, package metadata and the
content-hash index only; onnxruntime is imported when a model loads, torch when an export runs.

* Export folders (``gpt-simple export ... --format onnx``) are format ``onnx``: this backend
  runs them automatically.
* gpt-simple checkpoints run here only when asked (``--backend onnx``): the checkpoint is
  exported once into the cache (:mod:`gpt_simple_onnx.cache`) and the export runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import structlog

from gpt_simple.plugins import (
    AUTO,
    EXPLICIT,
    OVERFLOW_EXTRAPOLATE,
    Backend,
    BackendError,
    CheckpointError,
    CheckpointInfo,
    ConfigError,
    Device,
    Exporter,
    ExportOptions,
    Format,
    LoadRequest,
    Preflight,
    PreflightProblem,
    hookimpl,
    install_command,
)
from gpt_simple_lm_format.layout import FORMAT as GPT_SIMPLE_FORMAT
from gpt_simple_onnx import layout, runtime
from gpt_simple_onnx.cache import CacheKey, ONNXCache, key_for
from gpt_simple_onnx.runtime import UnreadableGraph

if TYPE_CHECKING:
    from gpt_simple_onnx.runner import OnnxModel

GPT_SIMPLE_PLUGIN_API = 1
#: gpt-simple checkpoints, which this backend runs through an export.
GPT_SIMPLE_PLUGIN_REQUIRES = ("gpt-simple-lm",)

log = structlog.get_logger(__name__)

EXPORT_REQUIRES = ("torch", "safetensors", "onnx", "onnxscript")
INSTALL_RUNTIME = install_command("gpt-simple-inference", "onnx")
INSTALL_EXPORT = install_command("gpt-simple-inference", "export")
FP16_ON_CPU = (
    "fp16 on the CPU: ONNX Runtime runs it, but most CPU kernels convert to fp32 and back, so "
    "it is slower than fp32 and no more exact; fp16 is meant for --device cuda"
)


def _quantized(quantization: str | None) -> str:
    return f"an {quantization} export" if quantization else "an export without quantization"


def export_missing() -> list[str]:
    """Import names an export needs that are not installed (nothing is imported)."""
    return [name for name in EXPORT_REQUIRES if importlib.util.find_spec(name) is None]


def export_dtype(request: LoadRequest) -> str:
    """The dtype to export a gpt-simple checkpoint in: as asked, else fp32 for quantized
    weights (the quantizer starts from fp32), fp16 on CUDA, fp32 on the CPU."""
    if request.dtype != AUTO:
        return request.dtype
    if request.quantize is not None:
        return "fp32"
    return "fp16" if request.device.kind == "cuda" else "fp32"


class OnnxBackend(Backend):
    """ONNX Runtime: runs export folders, and gpt-simple checkpoints through a cached export."""

    name: ClassVar[str] = "onnx"
    formats: ClassVar[Mapping[str, str]] = {layout.FORMAT: AUTO, GPT_SIMPLE_FORMAT: EXPLICIT}
    priority: ClassVar[int] = 100
    dtypes: ClassVar[tuple[str, ...]] = layout.DTYPES
    quantizations: ClassVar[tuple[str, ...]] = tuple(layout.WEIGHT_ONLY)
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    context_overflow: ClassVar[tuple[str, ...]] = (OVERFLOW_EXTRAPOLATE,)
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    extra: ClassVar[str | None] = "onnx"
    refusals: ClassVar[Mapping[str, str]] = {
        "dtype:bf16": "ONNX Runtime has no bf16 kernels on the CPU: use --dtype fp32 with "
        "backend onnx (fp16 on cuda), or --backend torch for bf16",
        "device": "ONNX Runtime runs on cpu, and on cuda with onnxruntime-gpu "
        "(--backend torch runs on more devices)",
        "context_overflow": "past the context it extrapolates (RoPE keeps counting); the "
        "torch backend can truncate",
    }

    def __init__(self, cache: ONNXCache | None = None) -> None:
        self._cache = cache

    @property
    def cache(self) -> ONNXCache:
        # Read at use, not at registration: $GPT_SIMPLE_CACHE may change (tests, notebooks).
        return self._cache or ONNXCache()

    # Planning --------------------------------------------------------------------------------
    def preflight(self, checkpoint: CheckpointInfo, request: LoadRequest) -> Preflight:
        """What the declarations cannot say: CUDA needs onnxruntime-gpu, an export folder runs
        only in its own dtype, a gpt-simple checkpoint needs an export (cached, or the export
        extra to make one)."""
        problems: list[PreflightProblem | str] = []
        warnings: list[str] = []
        notes: list[str] = []
        conflict = runtime.package_conflict()
        if conflict:
            warnings.append(conflict)
        problems += self._device_problems(request.device)
        if checkpoint.format == layout.FORMAT:
            problems += self._folder_problems(checkpoint, request)
            dtype = checkpoint.details.get("dtype")
        elif checkpoint.format == GPT_SIMPLE_FORMAT:
            dtype = export_dtype(request)
            if request.quantize is not None and dtype != "fp32":
                problems.append(
                    PreflightProblem(
                        f"{request.quantize} weights are quantized from fp32: use dtype fp32 "
                        f"(or auto) with model.quantize {request.quantize}",
                        "model.quantize",
                    )
                )
            if not problems:  # hashing the weights is only worth it for a runnable request
                found, message = self._cache_status(checkpoint, dtype, request.quantize)
                notes.append(message)
                missing = export_missing()
                if found is None and missing:
                    problems.append(
                        f"--backend onnx on a gpt-simple checkpoint exports it first, which "
                        f"needs {', '.join(missing)} ({INSTALL_EXPORT})"
                    )
        else:
            problems.append(
                f"backend 'onnx' runs ONNX exports and gpt-simple checkpoints, "
                f"not {checkpoint.format}"
            )
            dtype = None
        if dtype == "fp16" and request.device.kind in ("cpu", AUTO):
            warnings.append(FP16_ON_CPU)
        return Preflight(problems, warnings, notes)

    def _device_problems(self, device: Device) -> list[PreflightProblem]:
        if device.kind != "cuda" or runtime.gpu_package_installed():
            return []
        return [
            PreflightProblem(
                f"device {device} with backend 'onnx' needs onnxruntime-gpu, which is not "
                f"installed ({install_command('gpt-simple-inference', 'onnx-gpu')} into an "
                f"environment without onnxruntime); or use --device cpu, or --backend torch "
                f"on {device}",
                "--device",
            )
        ]

    def _folder_problems(
        self, checkpoint: CheckpointInfo, request: LoadRequest
    ) -> list[PreflightProblem]:
        problems = []
        exported = checkpoint.details.get("dtype")
        if request.dtype not in (AUTO, exported):
            problems.append(
                PreflightProblem(
                    f"{checkpoint.path} is an {exported} export and runs only as exported "
                    f"(dtype auto or {exported}); for {request.dtype}, export again with "
                    f"--dtype {request.dtype} or run the gpt-simple checkpoint with --backend "
                    f"onnx --dtype {request.dtype}",
                    "model.dtype",
                )
            )
        quantized = checkpoint.details.get("quantization")
        if request.quantize not in (None, quantized):
            problems.append(
                PreflightProblem(
                    f"{checkpoint.path} is {_quantized(quantized)} and runs only as exported; "
                    f"for {request.quantize}, export again with --quantize {request.quantize} "
                    f"or run the gpt-simple checkpoint with --backend onnx --quantize "
                    f"{request.quantize}",
                    "model.quantize",
                )
            )
        return problems

    def _key(self, checkpoint: CheckpointInfo, dtype: str, quantize: str | None) -> CacheKey:
        if checkpoint.weights is None:
            raise CheckpointError(f"{checkpoint.path}: no weights file")
        return key_for(checkpoint.weights, dtype=dtype, quantization=quantize, root=self.cache.root)

    def _cache_status(
        self, checkpoint: CheckpointInfo, dtype: str, quantize: str | None
    ) -> tuple[Path | None, str]:
        """The cached export for this request (or None) and the plan line saying so."""
        try:
            key = self._key(checkpoint, dtype, quantize)
        except OSError as exc:
            return None, f"ONNX export: the run exports first (cannot hash the weights: {exc})"
        found = self.cache.find(key, any_versions=bool(export_missing()))
        if found is not None:
            return found, f"ONNX export: cached ({found})"
        return None, (
            f"ONNX export: none cached yet, the run exports this checkpoint first "
            f"(into {self.cache.entry(key)})"
        )

    # Loading ---------------------------------------------------------------------------------
    def resolve(self, request: LoadRequest) -> LoadRequest:
        """``auto`` device is the CPU (CUDA only when asked). ``auto`` dtype stays: an export
        folder runs in its own dtype, a gpt-simple checkpoint is exported per
        :func:`export_dtype`."""
        return attrs.evolve(request, device="cpu") if request.device.is_auto else request

    def load(self, checkpoint: CheckpointInfo, request: LoadRequest) -> OnnxModel:
        request = self.resolve(request)
        if checkpoint.format != GPT_SIMPLE_FORMAT:
            return self.open(checkpoint.path, checkpoint, request)
        folder, origin = self.cached_export(checkpoint, export_dtype(request), request.quantize)
        try:
            return self.open(folder, checkpoint, request, origin)
        except (UnreadableGraph, CheckpointError) as exc:
            if origin != "cached":
                raise
            # A cached entry that cannot be read (a disk fault, a copy cut short) would fail
            # every later run the same way: replace it, once.
            log.warning(
                "the cached ONNX export is damaged: removing it and exporting again",
                cache=str(folder),
                error=str(exc),
            )
            self.cache.discard(folder)
            folder, origin = self.cached_export(checkpoint, export_dtype(request), request.quantize)
            return self.open(folder, checkpoint, request, origin)

    def cached_export(
        self, checkpoint: CheckpointInfo, dtype: str, quantize: str | None = None
    ) -> tuple[Path, str]:
        """The cache entry of ``checkpoint`` in ``dtype`` (weights quantized to ``quantize``),
        exported now if missing: (folder, ``"cached"`` or ``"exported"``)."""
        key = self._key(checkpoint, dtype, quantize)
        missing = export_missing()
        found = self.cache.find(key, any_versions=bool(missing))
        if found is not None:
            return found, "cached"
        if missing:
            raise BackendError(
                f"{checkpoint.path} has no cached ONNX export, and exporting needs "
                f"{', '.join(missing)} ({INSTALL_EXPORT})"
            )
        from gpt_simple_onnx.export import export_checkpoint

        log.info(
            "exporting to ONNX (once; later runs use the cache)",
            checkpoint=str(checkpoint.path),
            dtype=dtype,
            quantize=quantize,
            cache=str(self.cache.entry(key)),
        )
        options = ExportOptions(dtype=dtype, quantize=quantize, opset=key.opset)
        folder = self.cache.export(
            key,
            lambda temp: export_checkpoint(
                checkpoint,
                temp,
                options,
                content_hash=key.sha256,
                extra_manifest={"cache_key": key.as_dict()},
            ),
        )
        return folder, "exported"

    def open(
        self,
        folder: Path,
        checkpoint: CheckpointInfo,
        request: LoadRequest,
        origin: str | None = None,
    ) -> OnnxModel:
        """Start an ONNX Runtime session on the export in ``folder``; the tokenizer is
        ``checkpoint``'s (the user's override included)."""
        from gpt_simple_lm_format.config import ModelConfig
        from gpt_simple_lm_format.tokenizer import HFTokenizer
        from gpt_simple_onnx.runner import OnnxModel

        manifest = layout.read_manifest(folder)
        if manifest is None or checkpoint.tokenizer is None:
            raise CheckpointError(f"{folder}: not an ONNX export folder (no manifest)")
        session, threads = runtime.create_session(
            folder / layout.MODEL_FILE, device=request.device, threads=request.threads
        )
        notes: dict[str, Any] = {
            "provider": session.get_providers()[0],
            "threads": threads,
            "quantization": manifest.quantization,
            "opset": manifest.opset,
            "export": str(folder),
        }
        if origin is not None:
            notes["export_cache"] = origin
        return OnnxModel(
            session,
            ModelConfig.from_file(folder / layout.CONFIG_FILE),
            HFTokenizer(checkpoint.tokenizer),
            device=request.device,
            dtype=manifest.runs_as,
            notes=notes,
        )

    def describe_runtime(self) -> dict[str, Any]:
        return runtime.describe()


class OnnxExporter(Exporter):
    """``gpt-simple export CHECKPOINT --format onnx --out DIR``."""

    name: ClassVar[str] = "onnx"
    formats: ClassVar[tuple[str, ...]] = (GPT_SIMPLE_FORMAT,)
    requires: ClassVar[tuple[str, ...]] = EXPORT_REQUIRES
    extra: ClassVar[str | None] = "export"

    def export(
        self, checkpoint: CheckpointInfo, out: Path, options: ExportOptions
    ) -> Mapping[str, Any]:
        try:
            layout.check_export_options(options)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if options.quantize and not runtime.available():
            raise BackendError(
                f"--quantize {options.quantize} uses ONNX Runtime's quantizer, which is not "
                f"installed ({INSTALL_RUNTIME})"
            )
        from gpt_simple_onnx.export import export_checkpoint

        return export_checkpoint(checkpoint, out, options)


@hookimpl
def gpt_simple_register_backends(register: Callable[[Backend], None]) -> None:
    register(OnnxBackend())


@hookimpl
def gpt_simple_register_exporters(register: Callable[[Exporter], None]) -> None:
    register(OnnxExporter())


@hookimpl
def gpt_simple_register_formats(register: Callable[[Format], None]) -> None:
    register(Format(layout.FORMAT, "ONNX export folders written by gpt-simple export"))


@hookimpl
def gpt_simple_inspect_checkpoint(
    path: Path, tokenizer: Path | None, load_tokenizer: bool
) -> CheckpointInfo | None:
    return layout.inspect(path, tokenizer, load_tokenizer)
