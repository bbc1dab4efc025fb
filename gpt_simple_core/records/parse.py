"""Reading JSONL input into records, reporting every structural problem of the file at once."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_core.records.converter import structure_block
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.schema import MAX_SEED, GenerationSpec, ModelSpec
from gpt_simple_core.strict_json import DECODER, DuplicateKey

KNOWN_TOP_LEVEL = ("prompt", "model", "generation", "context", "continuation", "text")
#: What a record asks for: text generated from its prompt, or a score of given text.
GENERATE = "generate"
LOGLIKELIHOOD = "loglikelihood"  # {"context", "continuation"}: log P(continuation | context)
ROLLING = "loglikelihood_rolling"  # {"text"}: log P(text), over windows of the context
SCORE = "score"  # the parser's mode that reads either of the two above
SCORING = GenerationSpec(max_new_tokens=1, greedy=True)
RESERVED = ("completion", "error", "meta")  # output keys: an input carrying them is a mistake
TYPO_MIN_LENGTH = 5
TYPO_MAX_DISTANCE = 2


@attrs.frozen
class Record:
    """One input record. ``raw`` is the object as read (key order kept) for echoing."""

    index: int
    line: int
    prompt: str
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)
    model: ModelSpec | None = None
    generation: GenerationSpec | None = None  # without the seed, so sweeps share one object
    seed: int | None = None  # the record's own generation.seed
    task: str = GENERATE
    #: LOGLIKELIHOOD: the text scored after ``prompt`` (the context); ROLLING: ``prompt`` is it
    continuation: str | None = None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (small strings only: top-level keys)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _typo_of(key: str, record: dict[str, Any]) -> str | None:
    """The known key ``key`` misspells, if it is long enough and that key is absent."""
    if len(key) < TYPO_MIN_LENGTH or key in KNOWN_TOP_LEVEL:
        return None
    for known in KNOWN_TOP_LEVEL:
        if known not in record and edit_distance(key, known) <= TYPO_MAX_DISTANCE:
            return known
    return None


class _BlockCache:
    """Sweeps repeat the same blocks on every line: parse each distinct one once.

    Problems are never cached (they carry line numbers): a block with problems is parsed again
    wherever it appears.
    """

    def __init__(self) -> None:
        self._done: dict[tuple, Any] = {}

    def lookup(
        self, kind: str, raw: Any, parse: Callable[[Any], tuple[Any, list[Problem]]]
    ) -> tuple[Any, list[Problem]]:
        try:  # types are part of the key: True == 1 must not share an entry
            key = (kind, tuple(raw.items()), tuple(map(type, raw.values())))
            cached = self._done.get(key)
        except (AttributeError, TypeError):  # not a dict, or unhashable values (lists)
            return parse(raw)
        if cached is None:
            cached, problems = parse(raw)
            if cached is None:
                return None, problems
            self._done[key] = cached
        return cached, []


def _merge_dtypes(
    model: ModelSpec | None, generation: GenerationSpec, line: int | None
) -> tuple[ModelSpec | None, GenerationSpec, list[Problem]]:
    """``generation.dtype`` means the model dtype (the gpt-simple docs list it there)."""
    if generation.dtype is None:
        return model, generation, []
    generation_only = attrs.evolve(generation, dtype=None)
    if model is not None and model.dtype is not None and model.dtype != generation.dtype:
        message = f"{generation.dtype} conflicts with model.dtype {model.dtype}"
        return model, generation_only, [Problem(line, "generation.dtype", message)]
    model = attrs.evolve(model or ModelSpec(), dtype=generation.dtype)
    return model, generation_only, []


def parse_generation(
    raw: Any, path: str = "generation", line: int | None = None
) -> tuple[GenerationSpec | None, list[Problem]]:
    """A generation block (record, config file or CLI), with ``do_sample`` folded in."""
    spec, problems = structure_block(raw, GenerationSpec, path, line)
    if spec is None:
        return None, problems
    contradictions = [Problem(line, f"{path}.{f}", m) for f, m in spec.contradictions()]
    if contradictions:
        return None, contradictions
    return spec.normalized(), []


def parse_model(
    raw: Any, path: str = "model", line: int | None = None
) -> tuple[ModelSpec | None, list[Problem]]:
    """A model block; ``checkpoint`` and ``output_dir`` exclude each other."""
    spec, problems = structure_block(raw, ModelSpec, path, line)
    if spec is not None and spec.checkpoint is not None and spec.output_dir is not None:
        message = "give checkpoint or output_dir, not both (either accepts either kind of folder)"
        return None, [Problem(line, f"{path}.output_dir", message)]
    return spec, problems


class RecordParser:
    """Turns JSON objects into :class:`Record` s. ``allow_blocks=False`` is ``generate``'s mode,
    where ``model``/``generation`` belong on the command line."""

    def __init__(self, *, allow_blocks: bool = True, kind: str = GENERATE) -> None:
        self.allow_blocks = allow_blocks
        self.kind = kind
        self._cache = _BlockCache()
        self._clean_keys: set[tuple[str, ...]] = set()  # top-level key sets without problems

    def parse(self, obj: Any, index: int, line: int) -> tuple[Record | None, list[Problem]]:
        if not isinstance(obj, dict):
            kind = type(obj).__name__ if obj is not None else "null"
            return None, [Problem(line, "", f"each line must be a JSON object, got {kind}")]
        problems = self._top_level_problems(obj, line)
        if self.kind == SCORE:
            task, prompt, continuation = self._scored_text(obj, line, problems)
            generation = SCORING  # generates nothing: the plan's token budget counts 1 a record
        else:
            task, continuation, generation = GENERATE, None, None
            prompt = obj.get("prompt")
            if "prompt" not in obj:
                problems.append(Problem(line, "prompt", "is required"))
            elif not isinstance(prompt, str):
                problems.append(Problem(line, "prompt", "must be a string"))
        model = seed = None
        if self.allow_blocks:
            if "model" in obj:
                model, found = self._cache.lookup(
                    "model", obj["model"], lambda raw: parse_model(raw, line=line)
                )
                problems += found
            if "generation" in obj:
                generation, seed, found = self._generation(obj["generation"], line)
                problems += found
            if generation is not None:
                model, generation, found = _merge_dtypes(model, generation, line)
                problems += found
        if problems:
            return None, problems
        return Record(index, line, prompt, obj, model, generation, seed, task, continuation), []

    @staticmethod
    def _scored_text(
        obj: dict[str, Any], line: int, problems: list[Problem]
    ) -> tuple[str, Any, str | None]:
        """(task, context or text, continuation) of a ``score`` record, problems appended."""
        for key in ("prompt", "generation"):
            if key in obj:
                problems.append(
                    Problem(line, key, 'a score record has "context" and "continuation", or "text"')
                )
        if "text" in obj:
            if "context" in obj or "continuation" in obj:
                problems.append(Problem(line, "text", 'give "text", or "context" + "continuation"'))
            if not isinstance(obj["text"], str) or not obj["text"]:
                problems.append(Problem(line, "text", "must be a non-empty string"))
            return ROLLING, obj["text"], None
        for key in ("context", "continuation"):
            if key not in obj:
                problems.append(Problem(line, key, 'is required (or "text" for a rolling score)'))
            elif not isinstance(obj[key], str):
                problems.append(Problem(line, key, "must be a string"))
        if isinstance(obj.get("continuation"), str) and not obj["continuation"]:
            problems.append(Problem(line, "continuation", "must not be empty"))
        return LOGLIKELIHOOD, obj.get("context"), obj.get("continuation")

    def _generation(
        self, raw: Any, line: int
    ) -> tuple[GenerationSpec | None, int | None, list[Problem]]:
        """(the block without its seed, the seed, problems). Per-record seeds would make
        every block of a sweep distinct: the rest is what the cache shares."""
        seed = None
        if isinstance(raw, dict) and "seed" in raw:
            seed = raw["seed"]
            if seed is not None and not (type(seed) is int and 0 <= seed <= MAX_SEED):
                spec, found = parse_generation(raw, line=line)  # reports the seed as usual
                if spec is None:
                    return None, None, found
                return attrs.evolve(spec, seed=None), spec.seed, []
            raw = raw.copy()  # keeps the key order, which the cache key includes
            del raw["seed"]
        spec, found = self._cache.lookup(
            "generation", raw, lambda block: parse_generation(block, line=line)
        )
        return spec, seed, found

    def _top_level_problems(self, obj: dict[str, Any], line: int) -> list[Problem]:
        keys = tuple(obj)
        if keys in self._clean_keys:  # a sweep repeats its keys on every line
            return []
        problems = []
        for key in obj:
            if key in RESERVED:
                problems.append(Problem(line, key, "is an output key and cannot appear in input"))
            elif not self.allow_blocks and key in ("model", "generation"):
                problems.append(
                    Problem(
                        line,
                        key,
                        "per-record settings need `gpt-simple batch-generate`; "
                        "`generate` takes them as command-line options",
                    )
                )
            elif (known := _typo_of(key, obj)) is not None:
                problems.append(Problem(line, key, f"unknown key (did you mean {known!r}?)"))
        if not problems:
            self._clean_keys.add(keys)
        return problems


def _lone_surrogate(obj: Any) -> bool:
    """JSON may escape half of a surrogate pair (``"\\ud800"``): not text, and not writable."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


#: Nesting deeper than this in one line is refused as that line's problem. Far above any real
#: record, and far below what Python's JSON reader and writer recurse through: a record nested
#: a thousand levels deep parses, but writing its output (echoing its keys) from inside the
#: engine would fail and take the run with it.
MAX_JSON_DEPTH = 100


_DECODER = DECODER
_scan = _DECODER.scan_once


def _loads(text: str) -> Any:
    """``json.loads(text)`` with repeated keys refused, calling the C scanner directly for a
    line that is one JSON value (the common case, about twice as fast on short lines);
    anything else goes through the full decoder, which raises its usual errors."""
    try:
        obj, end = _scan(text, 0)
    except DuplicateKey:
        raise
    except (StopIteration, ValueError):
        return _DECODER.decode(text)
    if end != len(text) and text[end:].strip():
        return _DECODER.decode(text)
    return obj


def json_depth(obj: Any) -> int:
    """How deeply ``obj`` nests lists and objects (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def too_deep(text: str, obj: Any) -> bool:
    """Whether ``obj`` (parsed from ``text``) nests deeper than :data:`MAX_JSON_DEPTH`. Counting
    brackets first (a necessary condition, at C speed) keeps the walk off ordinary lines."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    return json_depth(obj) > MAX_JSON_DEPTH


def _line_problem(number: int, text: str) -> tuple[Any, Problem | None]:
    """The object of one line, or the line's problem (invalid, ambiguous or too deep JSON)."""
    nested = f"nested deeper than {MAX_JSON_DEPTH} levels (the limit for one record)"
    try:
        obj = _loads(text)
    except DuplicateKey as exc:
        return None, Problem(number, "", f"invalid JSON: {exc}")
    except RecursionError:
        return None, Problem(number, "", f"invalid JSON: {nested}")
    except ValueError as exc:
        return None, Problem(number, "", f"invalid JSON: {exc}")
    if too_deep(text, obj):
        return None, Problem(number, "", f"invalid JSON: {nested}")
    return obj, None


def iter_json_lines(lines: Iterable[str | bytes]) -> Iterator[tuple[int, Any | Problem]]:
    """(line number, parsed object or Problem) for each non-blank line.

    Byte lines are decoded here, so invalid UTF-8 is a problem of its line, not a crash.
    """
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            yield number, Problem(number, "", f"invalid UTF-8: {exc}")
            continue
        if not text or text.isspace():
            continue
        obj, problem = _line_problem(number, text)
        if problem is not None:
            yield number, problem
            continue
        if ("\\ud" in text or "\\uD" in text) and _lone_surrogate(obj):
            message = "invalid JSON: a \\uD800-\\uDFFF escape without its pair is not text"
            yield number, Problem(number, "", message)
            continue
        yield number, obj


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause the cyclic garbage collector while many long-lived objects are built.

    Reading 100k records allocates millions of dicts and strings that all stay alive; the
    collector would keep walking all of them (a third of the time of a dry-run), while they
    hold no reference cycles to find. Reference counting still frees everything as usual.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def parse_lines(
    lines: Iterable[str | bytes], *, allow_blocks: bool = True, kind: str = GENERATE
) -> tuple[list[Record], list[Problem]]:
    """Every record of a JSONL stream and every problem in it (``kind``: GENERATE records,
    or SCORE records for ``gpt-simple score``)."""
    parser = RecordParser(allow_blocks=allow_blocks, kind=kind)
    records: list[Record] = []
    problems: list[Problem] = []
    with bulk_allocation():
        for number, obj in iter_json_lines(lines):
            if isinstance(obj, Problem):
                problems.append(obj)
                continue
            record, found = parser.parse(obj, len(records), number)
            if record is None:
                problems.extend(found)
            else:
                records.append(record)
    return records, problems


def read_jsonl(path: Path, *, allow_blocks: bool = True) -> tuple[list[Record], list[Problem]]:
    """Parse a JSONL file (UTF-8)."""
    with path.open("rb") as f:
        return parse_lines(f, allow_blocks=allow_blocks)
