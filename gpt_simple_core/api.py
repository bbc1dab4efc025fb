"""The Python API, re-exported by the :mod:`gpt_simple` facade.

Shapes follow the trainer's own API (``gpt-simple-lm``), so scripts written for it keep working:
``validate_checkpoint`` returns a 3-field named tuple, ``load_for_inference`` a 3-tuple and
``generate`` a list of strings.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import attrs

from gpt_simple_core import logs
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.checkpoints.resolve import resolve_checkpoint
from gpt_simple_core.engine.executor import Executor
from gpt_simple_core.engine.result import RunResult
from gpt_simple_core.engine.stop import Stop
from gpt_simple_core.errors import ConfigError, GenerationError
from gpt_simple_core.output.sinks import MemorySink
from gpt_simple_core.protocol import LoadedModel, Tokenizer
from gpt_simple_core.records.parse import Record, parse_generation
from gpt_simple_core.registry import Registry, default_registry
from gpt_simple_core.session import Session
from gpt_simple_core.settings import RunOptions, Settings, with_default_model
from gpt_simple_core.wording import noun, plural

if TYPE_CHECKING:
    from gpt_simple_core.engine.token_sequence import TokenSequence


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
    registry: Registry | None = None,
) -> ValidatedCheckpoint:
    """Resolve and check a checkpoint without loading weights.

    Checks that the config parses (unknown keys reported), the weights exist (and, for
    safetensors, match the config), and the tokenizer is found and loads. Raises
    :class:`~gpt_simple_core.errors.CheckpointError` with every path tried otherwise.
    ``registry`` defaults to the installed plugins (:func:`default_registry`).
    """
    info = resolve_checkpoint(
        os.fspath(path),
        registry or default_registry(),
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
    options: Mapping[str, Any] | None = None,
    quantize: str | None = None,
    registry: Registry | None = None,
) -> tuple[Any, Tokenizer, Mapping[str, Any]]:
    """Load a checkpoint; return ``(model, tokenizer, model_config)`` like the trainer.

    For the PyTorch backend ``model`` is its ``nn.Module`` (``model(input_ids=ids).logits``
    works as in the trainer); other backends return their :class:`LoadedModel`. Either can be
    passed to :func:`generate`. ``backend`` defaults to the automatic choice by format;
    ``options`` are the backend's own (as a record's ``model.options``); ``quantize`` asks for
    weight quantization (``int8``/``int4``, as ``model.quantize``). The checkpoint goes
    through the same resolution, backend choice and pre-flight as a CLI run.
    """
    raw_model: dict[str, Any] = {"checkpoint": os.fspath(path)}
    asked = (("dtype", dtype), ("backend", backend), ("options", options), ("quantize", quantize))
    for key, value in asked:
        if value is not None:
            raw_model[key] = dict(value) if key == "options" else value
    if tokenizer_path is not None:
        raw_model["tokenizer"] = os.fspath(tokenizer_path)
    spec = _api_block(raw_model, "model")
    session = _session(Settings(run=_run_options(device=device)), registry)
    loaded, info = session.load(spec)
    return loaded.public_model(), loaded.tokenizer, dict(info.config)


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
    registry: Registry | None = None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    logprobs_mode: str = "raw",
    n: int = 1,
) -> list[dict[str, Any]]:
    """Like :func:`generate` but returns one output record per prompt: ``prompt``, then
    ``completion`` or ``error``, the effective ``generation`` block and ``meta``.

    Defaults are the trainer API's (temperature 1.0, no top-k, no top-p), not the CLI's.
    ``logprobs``/``prompt_logprobs`` (0..20 alternatives) add each generated (prompt) token's
    log-probability to the record, from the raw distribution unless ``logprobs_mode`` is
    ``processed`` (docs/evaluating.md). ``n`` > 1 samples each prompt ``n`` times, each with
    its own seed: the record then also has ``completions``.
    ``seed`` is a run seed: each prompt's seed is derived from it and the prompt's position,
    so repeated prompts differ; the effective seed is in each record's ``generation``. Bad
    arguments raise :class:`~gpt_simple_core.errors.ConfigError` naming each one.
    """
    prepared = _prepare(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        do_sample=do_sample,
        repetition_penalty=repetition_penalty,
        seed=seed,
        return_full_text=return_full_text,
        min_p=min_p,
        stop=stop,
        stop_token_ids=stop_token_ids,
        ignore_eos=ignore_eos,
        batch_size=batch_size,
        registry=registry,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        logprobs_mode=logprobs_mode,
        n=n,
    )
    sink = MemorySink()
    prepared.session.generate(prepared.model, prepared.records, sink, meta=prepared.meta)
    return sink.in_order()


class _Prepared(NamedTuple):
    """What a call of the API generates with: its session, the model as the engine drives
    it, the prompts as records, and the ``meta`` every output record starts with."""

    session: Session
    model: LoadedModel
    records: list[Record]
    meta: dict[str, Any]


def _prepare(
    model: Any,
    tokenizer: Any,
    prompts: str | Iterable[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    do_sample: bool,
    repetition_penalty: float,
    seed: int | None,
    return_full_text: bool,
    min_p: float,
    stop: str | Sequence[str] | None,
    stop_token_ids: Sequence[int] | None,
    ignore_eos: bool,
    batch_size: int | None,
    registry: Registry | None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    logprobs_mode: str = "raw",
    n: int = 1,
) -> _Prepared:
    """The trainer-shaped keyword arguments checked and turned into what the session runs
    (shared by :func:`generate_records` and :func:`stream`, so both check alike)."""
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
        "logprobs_mode": logprobs_mode,
        "n": n,
    }
    for key, value in (("logprobs", logprobs), ("prompt_logprobs", prompt_logprobs)):
        if value is not None:
            raw_generation[key] = value
    if seed is not None:
        raw_generation["seed"] = seed
    generation = _api_block(raw_generation, "generation")
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    records = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"prompt {index} is {type(text).__name__}, not str")
        records.append(Record(index, index + 1, text, {"prompt": text}))
    settings = Settings(run=_run_options(batch_size=batch_size), generation=generation)
    session = _session(settings, registry)
    loaded = session.adopt(model, tokenizer)
    meta = {
        "dtype": loaded.dtype,
        "device": loaded.device,
        **({"notes": dict(loaded.notes)} if loaded.notes else {}),
    }
    return _Prepared(session, loaded, records, meta)


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
    ``ignore_eos``, ``batch_size``, ``registry``. Prompts are batched through the same engine
    as the CLI. Raises :class:`~gpt_simple_core.errors.GenerationError` if any prompt fails,
    :class:`~gpt_simple_core.errors.ConfigError` for a bad argument.
    """
    unknown = sorted(set(options) - _GENERATE_KEYWORDS)
    if unknown:
        from gpt_simple_core.records.converter import did_you_mean

        hints = "; ".join(f"{k}{did_you_mean(k, _GENERATE_KEYWORDS)}" for k in unknown)
        raise TypeError(f"generate() got {_unexpected(len(unknown))}: {hints}")
    records = generate_records(model, tokenizer, prompts, **options)
    errors = [(i, r["error"]) for i, r in enumerate(records) if "error" in r]
    if errors:
        detail = "; ".join(f"prompt {i}: {e['type']}: {e['message']}" for i, e in errors[:5])
        raise GenerationError(f"{plural(len(errors), 'prompt')} failed: {detail}")
    return [r["completion"] for r in records]


_GENERATE_KEYWORDS = frozenset(
    name
    for name in generate_records.__code__.co_varnames[
        : generate_records.__code__.co_argcount + generate_records.__code__.co_kwonlyargcount
    ]
    if name not in ("model", "tokenizer", "prompts")
)


_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(generate_records).parameters.items()
    if name in _GENERATE_KEYWORDS
}
#: One prompt streams: batching has nothing to do.
_STREAM_KEYWORDS = _GENERATE_KEYWORDS - {"batch_size"}


@attrs.frozen
class StreamEvent:
    """One token of a :func:`stream` with ``events=True``.

    ``text`` is what the token adds to the completion (``""`` while the token is only part of
    a character, or may be the start of a stop string; the text comes with a later event),
    ``token_id`` the token sampled (the EOS or stop id too, whose text is never part of the
    completion), ``finish_reason`` is set on the last event only (``eos``, ``stop``,
    ``length``). The ``text`` of all events adds up to the completion.
    """

    text: str
    token_id: int | None
    finish_reason: str | None = None


@overload
def stream(
    model: Any, tokenizer: Any, prompt: str, *, events: Literal[False] = False, **options: Any
) -> Iterator[str]: ...


@overload
def stream(
    model: Any, tokenizer: Any, prompt: str, *, events: Literal[True], **options: Any
) -> Iterator[StreamEvent]: ...


def stream(
    model: Any, tokenizer: Any, prompt: str, *, events: bool = False, **options: Any
) -> Iterator[str] | Iterator[StreamEvent]:
    """Complete ``prompt``, yielding the completion's text as it is decoded.

    Takes :func:`generate`'s keyword arguments (but ``batch_size``). The pieces are whole
    characters (a character split across tokens comes when its last byte does), and text that
    could be the start of a ``stop`` string is held back until it is known not to be one, so
    ``"".join(stream(...))`` is exactly what :func:`generate` returns for the same arguments
    and seed. With ``events=True`` it yields a :class:`StreamEvent` per token instead (with
    its id). Arguments are checked when ``stream`` is called; a prompt that fails raises
    :class:`~gpt_simple_core.errors.GenerationError` from the iteration.

    The tokens are decoded in a background thread by the same engine as :func:`generate`;
    leaving the loop early (``break``, an exception, Ctrl-C) stops it after the current
    decode step.
    """
    unknown = sorted(set(options) - _STREAM_KEYWORDS)
    if unknown:
        from gpt_simple_core.records.converter import did_you_mean

        hints = "; ".join(f"{k}{did_you_mean(k, _STREAM_KEYWORDS)}" for k in unknown)
        raise TypeError(f"stream() got {_unexpected(len(unknown))}: {hints}")
    if not isinstance(prompt, str):
        raise TypeError(f"stream() takes one prompt (a str), not {type(prompt).__name__}")
    prepared = _prepare(model, tokenizer, [prompt], **{**_DEFAULTS, **options})
    return _streamed(prepared, events)


class _Relay:
    """The sink of a stream's decode thread: each token's text onto the queue, then the
    record; :func:`_streamed` reads them in the caller's thread."""

    def __init__(self, queue: Queue[Any]) -> None:
        self.queue = queue

    def on_token(self, seq: TokenSequence, piece: str) -> None:
        self.queue.put(StreamEvent(piece, seq.last_token, seq.finish_reason))

    def put(self, index: int, record: dict[str, Any]) -> None:
        self.queue.put(record)


def _streamed(prepared: _Prepared, events: bool) -> Iterator[Any]:
    """Run the decode loop in a thread (it pushes tokens; an iterator is pulled) and yield
    what it relays; closing the iterator early stops the thread between two steps."""
    queue: Queue[Any] = Queue()
    stop = Stop()
    done = object()

    def decode() -> None:
        try:
            prepared.session.generate(
                prepared.model, prepared.records, _Relay(queue), meta=prepared.meta, stop=stop
            )
        except BaseException as exc:  # anything: it is raised in the caller's thread
            queue.put(exc)
        queue.put(done)

    worker = threading.Thread(target=decode, name="gpt-simple-stream", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = queue.get(timeout=0.1)  # a timeout, so Ctrl-C is not held up
            except Empty:
                continue
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, dict):  # the finished record
                if "error" in item:
                    error = item["error"]
                    raise GenerationError(f"the prompt failed: {error['type']}: {error['message']}")
                continue
            if events:
                yield item
            elif item.text:
                yield item.text
    finally:
        if worker.is_alive():
            with contextlib.suppress(BaseException):
                stop.request("stream closed")
            worker.join()


def _unexpected(count: int) -> str:
    return f"unexpected keyword {noun(count, 'argument')}"


def score(
    model: Any,
    tokenizer: Any,
    requests: Iterable[Mapping[str, str]],
    *,
    registry: Registry | None = None,
) -> list[dict[str, Any]]:
    """Score each request with a loaded model, as lm-evaluation-harness asks for it:
    ``{"context", "continuation"}`` gets log P(continuation | context) (``score``:
    ``logprob``, ``is_greedy``, ``tokens``), ``{"text"}`` a rolling log-likelihood
    (``logprob``, ``tokens``, ``windows``). Returns one output record per request, in order,
    with ``score`` or ``error``; the rules are in docs/evaluating.md. A malformed request
    raises :class:`~gpt_simple_core.errors.ConfigError` naming every problem."""
    from gpt_simple_core.records.parse import SCORE, RecordParser

    parser = RecordParser(allow_blocks=False, kind=SCORE)
    records, problems = [], []
    for index, request in enumerate(requests):
        record, found = parser.parse(dict(request), index, index + 1)
        problems += [f"request {p.line - 1}: {p.field}: {p.message}" for p in found]
        if record is not None:
            records.append(record)
    if problems:
        raise ConfigError(_invalid(len(problems)) + "; ".join(problems))
    session = _session(Settings(), registry)
    loaded = session.adopt(model, tokenizer)
    meta = {"dtype": loaded.dtype, "device": loaded.device}
    sink = MemorySink()
    session.generate(loaded, records, sink, meta=meta)
    return sink.in_order()


def _invalid(count: int) -> str:
    return f"invalid {noun(count, 'argument')}: "


def _session(settings: Settings, registry: Registry | None) -> Session:
    """The API's session: the installed plugins unless given, quiet (warnings only)."""
    logs.ensure_configured(level="warning")
    return Session(settings, registry or default_registry(), progress=False)


def _api_block(raw: dict[str, Any], kind: str) -> Any:
    """A model or generation block from keyword arguments, checked like a record's; every
    problem is named in one :class:`ConfigError` (``top_p: must be in (0, 1], got 2``)."""
    from gpt_simple_core.records.parse import parse_model

    parse = parse_generation if kind == "generation" else parse_model
    spec, problems = parse(raw, path="")
    if problems or spec is None:
        raise ConfigError(
            _invalid(len(problems)) + "; ".join(f"{p.field}: {p.message}" for p in problems)
        )
    return spec


def _run_options(**values: Any) -> RunOptions:
    from gpt_simple_core.records.converter import structure_block

    run, problems = structure_block(
        {k: v for k, v in values.items() if v is not None}, RunOptions, ""
    )
    if problems or run is None:
        raise ConfigError(
            _invalid(len(problems)) + "; ".join(f"{p.field}: {p.message}" for p in problems)
        )
    return run


def batch_generate(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    resume: bool = False,
    force: bool = False,
    overwrite: bool = False,
    retry_errors: bool = False,
    model: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    executor: Executor | None = None,
) -> RunResult:
    """``gpt-simple batch-generate --input INPUT --output OUTPUT``: a self-describing sweep
    into a file, with the CLI's guarantees (docs/long-sweeps.md): an existing output is never
    replaced unless ``overwrite``; ``resume`` continues an interrupted one (``force``: even if
    the job changed, running again the records whose inputs changed).

    ``model`` and ``generation`` are the defaults of records that do not say otherwise (a
    config file's ``[model]`` and ``[generation]`` tables; ``generation["seed"]`` is the run
    seed). ``executor`` runs the groups (default: this process; see :func:`run_on_ray`).
    Returns the :class:`RunResult`; structural problems of the input raise
    :class:`ConfigError` listing every one with its line.
    """
    from gpt_simple_core.jobs.output import OutputJob, OutputMode
    from gpt_simple_core.records.source import read_records
    from gpt_simple_core.settings import settings_from_mapping

    layers = {k: dict(v) for k, v in (("model", model), ("generation", generation)) if v}
    settings, problems = settings_from_mapping(layers, "arguments")
    if problems:
        raise ConfigError(_invalid(len(problems)) + "; ".join(p.render("") for p in problems))
    settings = with_default_model(settings)
    mode = OutputMode(resume=resume, force=force, overwrite=overwrite, retry_errors=retry_errors)
    source = os.fspath(input)
    with OutputJob(Path(output), mode, input_path=Path(source)) as job:
        logs.ensure_configured(level="warning")
        session = Session(job.settings(settings), registry or default_registry(), progress=False)
        records, found, digest = read_records(source)
        planned = session.plan(records, found, source=digest.name)
        if not planned.plan.ok:
            raise ConfigError("\n".join(p.render() for p in planned.plan.problems))
        return job.run(session, planned, digest, executor=executor)


def run_on_ray(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    address: str | None = "auto",
    **options: Any,
) -> RunResult:
    """:func:`batch_generate` on the Ray cluster at ``address`` (``auto``: the one this
    machine belongs to; ``ray://HOST:PORT``: through Ray Client): one actor per model group,
    records streamed back into ``output`` with the same guarantees (order, resume). Needs the
    ``[ray]`` extra."""
    from gpt_simple_core.engine.ray_executor import RayExecutor

    return batch_generate(input, output, executor=RayExecutor(address), **options)
