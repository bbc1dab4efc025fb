"""The output record: the input's keys in order, then ``completion`` or ``error``, the effective
``generation`` block (in place of the input's, seed included), then ``meta``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.engine.token_sequence import TokenSequence
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import LoadedModel
from gpt_simple_core.records.parse import GENERATE


def error_entry(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def output_record(
    planned: PlannedRecord,
    meta: Mapping[str, Any],
    *,
    completion: str | None = None,
    error: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``extra``: keys written after the completion (``logprobs``, ``prompt_logprobs``), or in
    its place for a score record (``score``), which has no ``generation`` block either."""
    generating = planned.record.task == GENERATE
    generation = planned.params.to_json() if generating else None
    out: dict[str, Any] = {}
    for key, value in planned.record.raw.items():
        out[key] = generation if key == "generation" and generating else value
    if error is not None:
        out["error"] = dict(error)
    else:
        if generating:
            out["completion"] = completion
        out.update(extra or {})
    if generating:
        out.setdefault("generation", generation)
    out["meta"] = dict(meta)
    return out


def group_meta(
    info: CheckpointInfo,
    backend: str,
    backend_reason: str | None,
    model: LoadedModel | None,
    requested: Mapping[str, str],
) -> dict[str, Any]:
    """What every record of a group shares in ``meta``."""
    meta: dict[str, Any] = {
        "checkpoint": str(info.path),
        "format": info.format,
        "step": info.step,
        "backend": backend,
        "backend_reason": backend_reason,
        "dtype": model.dtype if model else requested["dtype"],
        "device": model.device if model else requested["device"],
    }
    if model is not None and model.notes:
        meta["notes"] = dict(model.notes)
    return meta


def sequence_meta(
    shared: Mapping[str, Any], seq: TokenSequence, model: LoadedModel
) -> dict[str, Any]:
    meta = dict(shared)
    meta["prompt_tokens"] = len(seq.prompt_ids)
    meta["completion_tokens"] = len(seq.generated)
    meta["finish_reason"] = seq.finish_reason
    context = model.context_length
    if context is not None and seq.length > context:
        notes = dict(meta.get("notes", {}))
        notes["context"] = (
            f"{seq.length} tokens ran past the context of {context}; "
            f"policy: {model.context_overflow}"
        )
        meta["notes"] = notes
    return meta


def samples_record(
    planned: PlannedRecord,
    samples: Sequence[TokenSequence],
    shared: Mapping[str, Any],
    model: LoadedModel,
) -> dict[str, Any]:
    """The output record of a record with ``n`` > 1: ``completion`` (the first sample, as for
    ``n`` 1), ``completions`` (all, in sample order), ``logprobs`` one list per sample."""
    first = samples[0]
    meta = sequence_meta(shared, first, model)
    meta["completion_tokens"] = sum(len(s.generated) for s in samples)
    meta["finish_reasons"] = [s.finish_reason for s in samples]
    extra: dict[str, Any] = {"completions": [s.text() for s in samples]}
    fields = first.logprob_fields()
    if "logprobs" in fields:
        extra["logprobs"] = [s.token_logprobs for s in samples]
    if "prompt_logprobs" in fields:
        extra["prompt_logprobs"] = fields["prompt_logprobs"]
    return output_record(planned, meta, completion=first.text(), extra=extra)
