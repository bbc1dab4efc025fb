"""The Python API, re-exported by the :mod:`gpt_simple` facade.

Shapes follow the trainer's own API (``gpt-simple-lm``), so scripts written for it keep working:
``validate_checkpoint`` returns a 3-field named tuple, ``load_for_inference`` a 3-tuple and
``generate`` a list of strings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.checkpoints.resolve import resolve_checkpoint
from gpt_simple_core.errors import BackendError, GenerationError
from gpt_simple_core.plan.backend_choice import choose_backend
from gpt_simple_core.plan.planner import PlannedRecord
from gpt_simple_core.protocol import LoadedModel, LoadRequest, Tokenizer
from gpt_simple_core.records.parse import Record, parse_generation
from gpt_simple_core.records.schema import (
    BUILTIN_GENERATION,
    normalize_dtype,
    resolve_generation,
    stack,
)
from gpt_simple_core.records.seeds import derive_seed, draw_run_seed


class _CheckpointFields(NamedTuple):
    checkpoint_dir: Path
    tokenizer_dir: Path | None
    model_config: Mapping[str, Any]


class ValidatedCheckpoint(_CheckpointFields):
    """``(checkpoint_dir, tokenizer_dir, model_config)``, as the trainer returns, plus attributes:
    ``format``, ``step``, ``selected_because``, ``weights_file``, ``eos_id``, ``param_count``,
    ``context_length``, ``warnings`` and ``info`` (the full :class:`CheckpointInfo`)."""

    info: CheckpointInfo

    def __getattr__(self, name: str) -> Any:
        aliases = {"weights_file": "weights"}
        info = self.__dict__["info"]
        return getattr(info, aliases.get(name, name))


def validate_checkpoint(
    path: str | os.PathLike[str],
    *,
    tokenizer_path: str | os.PathLike[str] | None = None,
    load_tokenizer: bool = True,
) -> ValidatedCheckpoint:
    """Resolve and check a checkpoint without loading weights.

    Checks that the config parses (unknown keys reported), the weights exist (and, for
    safetensors, match the config), and the tokenizer is found and loads. Raises
    :class:`~gpt_simple_core.errors.CheckpointError` with every path tried otherwise.
    """
    info = resolve_checkpoint(
        os.fspath(path),
        tokenizer=os.fspath(tokenizer_path) if tokenizer_path is not None else None,
        load_tokenizer=load_tokenizer,
    )
    result = ValidatedCheckpoint(info.path, info.tokenizer, dict(info.config))
    result.__dict__["info"] = info
    return result


def load_for_inference(
    path: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str | None = None,
    tokenizer_path: str | os.PathLike[str] | None = None,
    backend: str | None = None,
) -> tuple[Any, Tokenizer, Mapping[str, Any]]:
    """Load a checkpoint; return ``(model, tokenizer, model_config)`` like the trainer.

    For the PyTorch backend ``model`` is its ``nn.Module`` (``model(input_ids=ids).logits``
    works as in the trainer); other backends return their :class:`LoadedModel`. Either can be
    passed to :func:`generate`. ``backend`` defaults to the automatic choice by format.
    """
    from gpt_simple_core import plugin_manager

    info = resolve_checkpoint(
        os.fspath(path),
        tokenizer=os.fspath(tokenizer_path) if tokenizer_path is not None else None,
    )
    request = LoadRequest(
        dtype=normalize_dtype(dtype) if dtype else "auto", device=device or "auto"
    )
    choice = choose_backend(
        info, backend, request, plugin_manager.get_backends(), plugin_manager.plugin_errors
    )
    if choice.problems or choice.backend is None:
        raise BackendError("; ".join(choice.problems))
    loaded = choice.backend.load(info, choice.backend.resolve(request))
    return loaded.public_model(), loaded.tokenizer, dict(info.config)


def _as_loaded_model(model: Any, tokenizer: Any) -> LoadedModel:
    from gpt_simple_core import plugin_manager

    if isinstance(model, LoadedModel):
        return model
    for backend in plugin_manager.get_backends().values():
        adopted = backend.adopt(model, tokenizer)
        if adopted is not None:
            return adopted
    raise TypeError(
        f"{type(model).__name__} is not a model gpt-simple can run: pass what "
        f"load_for_inference returned"
    )


def generate_records(
    model: Any,
    tokenizer: Any,
    prompts: str | Iterable[str],
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool = True,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    return_full_text: bool = False,
    min_p: float = 0.0,
    stop: str | Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    ignore_eos: bool = False,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Like :func:`generate` but returns one output record per prompt: ``prompt``, then
    ``completion`` or ``error``, the effective ``generation`` block and ``meta``.

    Defaults are the trainer API's (temperature 1.0, no top-k, no top-p), not the CLI's.
    ``seed`` is a run seed: each prompt's seed is derived from it and the prompt's position,
    so repeated prompts differ; the effective seed is in each record's ``generation``.
    """
    loaded = _as_loaded_model(model, tokenizer)
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    raw_generation = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": 0 if top_k is None else top_k,
        "top_p": 1.0 if top_p is None else top_p,
        "min_p": min_p,
        "greedy": not do_sample,
        "repetition_penalty": repetition_penalty,
        "return_full_text": return_full_text,
        "stop": [stop] if isinstance(stop, str) else list(stop or []),
        "stop_token_ids": list(stop_token_ids or []),
        "ignore_eos": ignore_eos,
    }
    if seed is not None:
        raw_generation["seed"] = seed
    spec, problems = parse_generation(raw_generation, path="")
    if problems or spec is None:
        raise ValueError("; ".join(f"{p.field}: {p.message}" for p in problems))
    run_seed = spec.seed if spec.seed is not None else draw_run_seed()
    spec = stack(BUILTIN_GENERATION, attrs.evolve(spec, seed=None))
    planned = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"prompt {index} is {type(text).__name__}, not str")
        record = Record(index, index + 1, text, {"prompt": text})
        planned.append(
            PlannedRecord(record, resolve_generation(spec, derive_seed(run_seed, index)))
        )
    return _run_in_memory(loaded, planned, batch_size)


def _run_in_memory(
    loaded: LoadedModel, planned: list[PlannedRecord], batch_size: int | None
) -> list[dict[str, Any]]:
    from gpt_simple_core.engine.results import error_entry, output_record, sequence_meta
    from gpt_simple_core.engine.scheduler import GroupScheduler

    shared = {
        "dtype": loaded.dtype,
        "device": loaded.device,
        **({"notes": dict(loaded.notes)} if loaded.notes else {}),
    }
    results: list[dict[str, Any] | None] = [None] * len(planned)

    def done(seq: Any) -> None:
        meta = sequence_meta(shared, seq, loaded)
        results[seq.index] = output_record(seq.planned, meta, completion=seq.text())

    def failed(item: PlannedRecord, exc: BaseException) -> None:
        results[item.record.index] = output_record(item, shared, error=error_entry(exc))

    GroupScheduler(loaded, on_done=done, on_error=failed, batch_size=batch_size).run(planned)
    return [r for r in results if r is not None]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: str | Iterable[str],
    **options: Any,
) -> list[str]:
    """Complete each prompt; return the completions in prompt order (``list[str]``).

    Accepts the trainer's keyword arguments (``max_new_tokens=100, temperature=1.0,
    top_k=None, top_p=None, do_sample=True, repetition_penalty=1.0, seed=None,
    return_full_text=False``) and more: ``min_p``, ``stop``, ``stop_token_ids``,
    ``ignore_eos``, ``batch_size``. Prompts are batched through the same engine as the CLI.
    Raises :class:`~gpt_simple_core.errors.GenerationError` if any prompt fails.
    """
    records = generate_records(model, tokenizer, prompts, **options)
    errors = [(i, r["error"]) for i, r in enumerate(records) if "error" in r]
    if errors:
        detail = "; ".join(f"prompt {i}: {e['type']}: {e['message']}" for i, e in errors[:5])
        raise GenerationError(f"{len(errors)} prompt(s) failed: {detail}")
    return [r["completion"] for r in records]
