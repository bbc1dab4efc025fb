"""OpenAI Batch API output (``--output-format openai``): one line per request, in input order.

Each of our output records (docs/output.md) becomes the line the OpenAI Batch API writes for a
``/v1/completions`` request (docs/openai-batch.md)::

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": {"id": "cmpl-...",
                  "object": "text_completion", "created": 0, "model": "gpt-x",
                  "system_fingerprint": "fp_...", "choices": [...], "usage": {...}}},
     "error": null}

or, for a record that failed, ``"response": null, "error": {"code", "message"}``.

Everything is derived from the record and the input's sha256, never from the clock, so a
resumed run's file is byte for byte an uninterrupted one's: the ids hash the input and the
``custom_id``; ``created`` is 0; ``system_fingerprint`` hashes what produced the completion
(checkpoint, backend, effective generation block), which is how :meth:`OpenAIOutput.matches`
knows, on ``--resume``, that a line is what this run would write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container, Mapping, Sequence
from typing import Any

from gpt_simple_core.plan.planned import PlannedGroup, PlannedRecord
from gpt_simple_core.records.openai import MODEL_KEY

#: our ``meta.finish_reason`` -> OpenAI's (an EOS token and a stop string or id both "stop").
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def request_ids(input_sha256: str, custom_id: str) -> dict[str, str]:
    """The line's ``id``, the response's ``request_id`` and the completion's ``id``."""
    return {
        "id": "batch_req_" + _digest("batch_req", input_sha256, custom_id)[:32],
        "request_id": _digest("request", input_sha256, custom_id)[:32],
        "completion_id": "cmpl-" + _digest("cmpl", input_sha256, custom_id)[:32],
    }


def fingerprint(checkpoint: Any, backend: Any, generation: Any) -> str:
    """``system_fingerprint``: what produced a completion (checkpoint, backend, parameters)."""
    text = json.dumps([checkpoint, backend, generation], sort_keys=True, ensure_ascii=False)
    return "fp_" + _digest("fingerprint", text)[:16]


def completion_logprobs(entries: Sequence[Mapping[str, Any]], start: int = 0) -> dict[str, Any]:
    """Our per-token ``logprobs`` (``[{"token", "text", "logprob", "top": [...]}, ...]``) as
    OpenAI's completions ``logprobs`` object. ``text_offset`` is each token's character offset
    in the completion (the sum of the earlier tokens' texts, from ``start``); two alternatives
    with the same text keep the better one (a ``top_logprobs`` entry is keyed by text)."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = start
    for entry in entries:
        tokens.append(entry["text"])
        token_logprobs.append(entry["logprob"])
        top: dict[str, float] = {}
        for alternative in entry.get("top", ()):
            top.setdefault(alternative["text"], alternative["logprob"])
        top_logprobs.append(top)
        offsets.append(offset)
        offset += len(entry["text"])
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


def _usage(meta: Mapping[str, Any]) -> dict[str, int] | None:
    prompt, completion = meta.get("prompt_tokens"), meta.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def openai_line(record: Mapping[str, Any], input_sha256: str) -> dict[str, Any]:
    """The OpenAI batch output line of our output record ``record`` (of a request read with
    ``--input-format openai``: it carries ``custom_id`` and the request's model name)."""
    custom_id = record.get("custom_id")
    ids = request_ids(input_sha256, str(custom_id))
    if "error" in record:
        error = record["error"]
        return {
            "id": ids["id"],
            "custom_id": custom_id,
            "response": None,
            "error": {"code": error.get("type"), "message": error.get("message")},
        }
    meta = record.get("meta", {})
    generation = record.get("generation", {})
    start = len(record.get("prompt", "")) if generation.get("return_full_text") else 0
    texts = record.get("completions") or [record.get("completion")]  # n samples, or one
    reasons = meta.get("finish_reasons") or [meta.get("finish_reason")]
    logprobs = record.get("logprobs")
    per_sample = logprobs if "completions" in record else [logprobs]
    choices = [
        {
            "text": text,
            "index": index,
            "logprobs": completion_logprobs(entries, start) if entries is not None else None,
            "finish_reason": FINISH_REASONS.get(reason, reason),
        }
        for index, (text, reason, entries) in enumerate(
            zip(texts, reasons, per_sample or [None] * len(texts), strict=True)
        )
    ]
    body: dict[str, Any] = {
        "id": ids["completion_id"],
        "object": "text_completion",
        "created": 0,
        "model": record.get(MODEL_KEY),
        "system_fingerprint": fingerprint(meta.get("checkpoint"), meta.get("backend"), generation),
        "choices": choices,
    }
    usage = _usage(meta)
    if usage is not None:
        body["usage"] = usage
    response = {"status_code": 200, "request_id": ids["request_id"], "body": body}
    return {"id": ids["id"], "custom_id": custom_id, "response": response, "error": None}


class OpenAIOutput:
    """The output shape of ``--output-format openai`` for one input (its sha256): what the
    writer writes for each record, and how a resumed run checks a line it finds."""

    def __init__(self, input_sha256: str) -> None:
        self.input_sha256 = input_sha256

    def line(self, record: dict[str, Any]) -> dict[str, Any]:
        return openai_line(record, self.input_sha256)

    def failed(self, obj: Any) -> bool:
        return isinstance(obj, dict) and obj.get("error") is not None

    def matches(
        self,
        obj: Any,
        planned: PlannedRecord,
        group: PlannedGroup,
        *,
        stale: Container[tuple[str, str]] = (),
        retry_errors: bool = False,
    ) -> bool:
        """Whether ``obj`` (an output line, parsed) is what this run writes for ``planned``:
        its ids, and for a completion, the fingerprint of this group and these parameters."""
        custom_id = planned.record.raw.get("custom_id")
        if not isinstance(obj, dict) or obj.get("custom_id") != custom_id:
            return False
        if obj.get("id") != request_ids(self.input_sha256, str(custom_id))["id"]:
            return False
        origin = (str(group.info.path), group.backend.name)
        if origin in stale:
            return False
        response = obj.get("response")
        if obj.get("error") is not None:
            return response is None and not retry_errors
        if not isinstance(response, dict) or not isinstance(response.get("body"), dict):
            return False
        expected = fingerprint(*origin, planned.params.to_json())
        return response["body"].get("system_fingerprint") == expected
