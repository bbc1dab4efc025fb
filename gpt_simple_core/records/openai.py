"""OpenAI Batch API input: each request line becomes one of our records before it is parsed.

A line of an OpenAI batch file is ``{"custom_id", "method", "url", "body"}``; its ``body`` is a
``/v1/completions`` request. :class:`OpenAIRequests` turns it into an ordinary record, so the
record parser validates it and the planner, dry-run, grouping, ``--resume`` and ``--shard``
see nothing new (docs/openai-batch.md). :func:`read_openai_records` is
:func:`~gpt_simple_core.records.source.read_records` for such a file (the same streaming,
hashing and line cap); each request reaches the record parser as the record::

    {"custom_id": "r1", "openai_model": "gpt-x", "prompt": "...",
     "model": {"checkpoint": "runs/a"}, "generation": {"max_new_tokens": 16, ...}}

What cannot be translated (a chat request, ``n`` > 1, a key we cannot honour, a model the map
does not name) is a :class:`~gpt_simple_core.records.problems.Problem` of its line, like every
other record problem; so is a problem the record parser finds in a translated field, named
after the request's own field (``body.max_tokens``, not ``generation.max_new_tokens``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.records.parse import (
    Record,
    edit_distance,
    iter_json_lines,
    parse_lines,
    parse_model,
)
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.source import MAX_LINE_BYTES, InputDigest, read_source

#: The output keeps the model name the request gave under this key (OpenAI's output echoes it).
MODEL_KEY = "openai_model"
COMPLETIONS_URL = "/v1/completions"
CHAT_URL = "/v1/chat/completions"
#: OpenAI's default ``max_tokens`` for completions.
DEFAULT_MAX_TOKENS = 16
TOP_LEVEL = ("custom_id", "method", "url", "body")
#: body key -> our generation key (``temperature`` 0 becomes ``greedy``; ``max_tokens`` here).
GENERATION_KEYS = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "logprobs": "logprobs",
    "n": "n",
}
BODY_KEYS = ("model", "prompt", *GENERATION_KEYS)
#: Request keys OpenAI knows that gpt-simple cannot honour: refused rather than ignored.
UNSUPPORTED = (
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "presence_penalty",
    "stream",
    "stream_options",
    "suffix",
    "user",
)
#: Where a field of a translated record came from, for the parser's problems.
SOURCE_FIELDS = {
    "prompt": "body.prompt",
    "generation.greedy": "body.temperature",
    **{f"generation.{ours}": f"body.{theirs}" for theirs, ours in GENERATION_KEYS.items()},
}


def _unknown(key: str, known: tuple[str, ...]) -> str:
    close = sorted(known, key=lambda k: edit_distance(key, k))
    if close and edit_distance(key, close[0]) <= 2:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (known: {', '.join(known)})"


class ModelMap:
    """Request model names -> our ``model`` blocks, from a TOML or JSON file (``--model-map``).

    Each top-level key is a model name; its value is a checkpoint (a path or
    ``builtin:default``) or a table of a record's ``model`` block (``checkpoint``, ``dtype``,
    ``backend``, ``tokenizer``, ...). Entries are validated when the file is read.
    """

    def __init__(self, entries: dict[str, dict[str, Any]], source: str) -> None:
        self.entries = entries
        self.source = source

    @classmethod
    def read(cls, path: str | Path) -> ModelMap:
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"--model-map {path}: {reason}") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python < 3.11
                    import tomli as tomllib
                data = tomllib.loads(text)
        except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            kind = "JSON" if path.suffix.lower() == ".json" else "TOML (.json files are JSON)"
            raise ConfigError(f"--model-map {path}: invalid {kind}: {exc}") from None
        return cls.from_data(data, str(path))

    @classmethod
    def from_data(cls, data: Any, source: str) -> ModelMap:
        if not isinstance(data, dict):
            raise ConfigError(f"--model-map {source}: must map model names to checkpoints")
        entries, problems = {}, []
        for name, value in data.items():
            block = {"checkpoint": value} if isinstance(value, str) else value
            spec, found = parse_model(block, path=name)
            problems += [p.render(source) for p in found]
            if spec is not None and spec.path is None:
                problems.append(f"{source}: {name}: names no checkpoint")
            if not found:
                entries[name] = dict(block)
        if problems:
            raise ConfigError("--model-map is invalid:\n  " + "\n  ".join(problems))
        return cls(entries, source)


def _is_checkpoint_name(name: str) -> bool:
    return name.startswith("builtin:") or os.path.exists(os.path.expanduser(name))


class OpenAIRequests:
    """The line translator of ``--input-format openai`` (one per read: it remembers the
    ``custom_id`` s seen, which must be unique across the file)."""

    def __init__(self, model_map: ModelMap | None = None) -> None:
        self.model_map = model_map
        self._ids: dict[str, int] = {}  # custom_id -> its line

    def source_field(self, field: str) -> str:
        """The request field a translated record's ``field`` came from."""
        return SOURCE_FIELDS.get(field, "body.model" if field.startswith("model") else field)

    def translate(self, obj: Any, line: int) -> tuple[Any, list[Problem]]:
        """The record of request ``obj`` (line ``line``), or ``None`` and its problems. A line
        that is not an object is left to the record parser, which says so."""
        if not isinstance(obj, dict):
            return obj, []
        problems = [Problem(line, k, _unknown(k, TOP_LEVEL)) for k in obj if k not in TOP_LEVEL]
        custom_id = self._custom_id(obj, line, problems)
        if obj.get("method", "POST") != "POST":
            problems.append(Problem(line, "method", f"must be POST, got {obj['method']!r}"))
        url = obj.get("url")
        if url == CHAT_URL:
            message = (
                f"{CHAT_URL} needs a chat template, and the tokenizers of gpt-simple checkpoints "
                f"carry none: use {COMPLETIONS_URL} with a plain prompt"
            )
            problems.append(Problem(line, "url", message))
        elif url != COMPLETIONS_URL:
            got = "missing" if url is None else f"got {url!r}"
            problems.append(Problem(line, "url", f"must be {COMPLETIONS_URL} ({got})"))
        body = obj.get("body")
        if not isinstance(body, dict):
            problems.append(Problem(line, "body", "is required and must be an object"))
            return None, problems
        record: dict[str, Any] = {"custom_id": custom_id, MODEL_KEY: body.get("model")}
        record["prompt"] = self._prompt(body, line, problems)
        model = self._model(body, line, problems)
        if model is not None:
            record["model"] = model
        record["generation"] = self._generation(body, line, problems)
        for key in body:
            if key in UNSUPPORTED:
                message = "is not supported by gpt-simple (remove it from the request)"
                problems.append(Problem(line, f"body.{key}", message))
            elif key not in BODY_KEYS:
                problems.append(Problem(line, f"body.{key}", _unknown(key, BODY_KEYS)))
        if problems:
            return None, problems
        return record, []

    def _custom_id(self, obj: dict[str, Any], line: int, problems: list[Problem]) -> Any:
        custom_id = obj.get("custom_id")
        if "custom_id" not in obj:
            problems.append(Problem(line, "custom_id", "is required"))
        elif not isinstance(custom_id, str) or not custom_id:
            problems.append(Problem(line, "custom_id", "must be a non-empty string"))
        elif custom_id in self._ids:
            first = self._ids[custom_id]
            message = f"{custom_id!r} repeats the custom_id of line {first} (each must be unique)"
            problems.append(Problem(line, "custom_id", message))
        else:
            self._ids[custom_id] = line
        return custom_id

    def _prompt(self, body: dict[str, Any], line: int, problems: list[Problem]) -> Any:
        prompt = body.get("prompt")
        if "prompt" not in body:
            problems.append(Problem(line, "body.prompt", "is required"))
        elif isinstance(prompt, list):
            if prompt and all(isinstance(p, str) for p in prompt):
                if len(prompt) == 1:
                    return prompt[0]
                message = f"{len(prompt)} prompts in one request: one prompt per request line"
            elif not prompt:
                message = "is an empty list: give one prompt, as a string"
            else:
                message = "token-id prompts are not supported: give the prompt as a string"
            problems.append(Problem(line, "body.prompt", message))
        elif not isinstance(prompt, str):
            problems.append(Problem(line, "body.prompt", "must be a string"))
        return prompt

    def _model(
        self, body: dict[str, Any], line: int, problems: list[Problem]
    ) -> dict[str, Any] | None:
        name = body.get("model")
        if "model" not in body:
            problems.append(Problem(line, "body.model", "is required"))
            return None
        if not isinstance(name, str) or not name:
            problems.append(Problem(line, "body.model", "must be a non-empty string"))
            return None
        if self.model_map is not None and name in self.model_map.entries:
            return dict(self.model_map.entries[name])
        if _is_checkpoint_name(name):
            return {"checkpoint": name}
        where = (
            f"the model map {self.model_map.source}"
            if self.model_map is not None
            else "a --model-map (none was given)"
        )
        message = f"{name!r} is not in {where}, and is not a checkpoint path or builtin:NAME"
        problems.append(Problem(line, "body.model", message))
        return None

    def _generation(
        self, body: dict[str, Any], line: int, problems: list[Problem]
    ) -> dict[str, Any]:
        generation: dict[str, Any] = {}
        for theirs, ours in GENERATION_KEYS.items():
            value = body.get(theirs)
            if value is None and theirs != "seed":  # OpenAI's null: the default
                continue
            if theirs == "temperature" and type(value) in (int, float) and value == 0:
                generation["greedy"] = True
            elif theirs in body:
                generation[ours] = value
        generation.setdefault("max_new_tokens", DEFAULT_MAX_TOKENS)
        return generation


def _translated(
    lines: Iterable[bytes], translator: OpenAIRequests, problems: list[Problem]
) -> Iterator[bytes]:
    """One line out per line in (so the parser numbers them alike): each request as its
    record's JSON, or a blank line where the request has problems (appended to ``problems``)."""
    for number, raw in enumerate(lines, 1):
        out = b""
        for _, obj in iter_json_lines([raw]):  # nothing for a blank line
            if isinstance(obj, Problem):  # invalid JSON or UTF-8: reported as the parser does
                problems.append(attrs.evolve(obj, line=number))
                break
            record, found = translator.translate(obj, number)
            if record is None:
                problems.extend(found)
            else:
                out = json.dumps(record, ensure_ascii=False).encode("utf-8")
        yield out


def read_openai_records(
    source: str,
    *,
    model_map: ModelMap | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> tuple[list[Record], list[Problem], InputDigest]:
    """The records of the OpenAI batch file ``source`` (a path, a FIFO or ``-``) and every
    problem in it, with the file's line numbers; none raised."""
    translator = OpenAIRequests(model_map)

    def parse(lines: Iterable[bytes]) -> tuple[list[Record], list[Problem]]:
        problems: list[Problem] = []
        records, found = parse_lines(_translated(lines, translator, problems))
        problems += [attrs.evolve(p, field=translator.source_field(p.field)) for p in found]
        problems.sort(key=lambda p: p.line if p.line is not None else sys.maxsize)
        return records, problems

    return read_source(source, max_line_bytes, parse)
