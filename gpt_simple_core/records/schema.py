"""The record schema: the ``model`` and ``generation`` blocks, with validation next to each field.

Blocks hold what one layer *says* (``None``: not said), so layers can be stacked:
built-in defaults < config file < command line < the record (:func:`stack`). The fully
resolved :class:`GenerationParams` is what the engine runs and what the output echoes.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import attrs

from gpt_simple_core.protocol import normalize_dtype

MAX_SEED = 2**64 - 1
#: The most alternatives ``logprobs`` / ``prompt_logprobs`` may ask for (as vLLM and OpenAI).
MAX_LOGPROBS = 20
#: ``logprobs_mode``: the model's raw distribution, or the one sampling draws from.
LOGPROBS_MODES = ("raw", "processed")
#: Output keys of the generation block echoed only when they differ from these defaults, so
#: records that do not ask for logprobs are written exactly as before.
QUIET_DEFAULTS = {"logprobs": None, "prompt_logprobs": None, "logprobs_mode": "raw", "n": 1}
#: The most samples one record may ask for (``generation.n``).
MAX_SAMPLES = 128
#: The smallest temperature: logits divided by less overflow float32 (and sampling that cold is
#: greedy decoding in all but name).
MIN_TEMPERATURE = 1e-6
#: ``model.quantize`` that undoes a lower layer's (a config file's) quantization.
NO_QUANTIZATION = "none"


# Validators (attrs signature). They see only set values: None means "not said here".
def _check(predicate: Any, message: str) -> Any:
    def validator(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not predicate(value):
            raise ValueError(message.format(value=value))

    return validator


def _dtype(instance: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None:
        normalize_dtype(value)


def _nonempty_strings(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and any(s == "" for s in value):
        raise ValueError("stop strings must not be empty")


def _token_ids(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and any(i < 0 for i in value):
        raise ValueError("token ids must be >= 0")


def _dtype_converter(value: Any) -> Any:
    """Normalise aliases on the way in; malformed names are left for the validator to report."""
    if not isinstance(value, str):
        return value
    try:
        return normalize_dtype(value)
    except ValueError:
        return value


@attrs.frozen
class Options:
    """A backend's options as one layer states them (``model.options``, a config table): the
    raw JSON object, validated against the chosen backend's schema at plan time. Hashable, so
    the planner can share work between records that state the same options."""

    values: dict[str, Any] = attrs.field(eq=False, hash=False)
    key: str = attrs.field(repr=False)
    source: str | None = attrs.field(default=None, eq=False, hash=False)  # for messages

    @classmethod
    def of(cls, values: dict[str, Any], source: str | None = None) -> Options:
        return cls(dict(values), json.dumps(values, sort_keys=True, default=repr), source)

    def over(self, lower: Options | None) -> Options:
        """These options over ``lower`` (key by key)."""
        if lower is None:
            return self
        return Options.of({**lower.values, **self.values}, self.source or lower.source)


@attrs.frozen(kw_only=True)
class ModelSpec:
    """Which model runs a record: ``checkpoint`` (or ``output_dir``: a run directory)."""

    checkpoint: str | None = None
    output_dir: str | None = None
    dtype: str | None = attrs.field(default=None, converter=_dtype_converter, validator=_dtype)
    tokenizer: str | None = None
    backend: str | None = None
    options: Options | None = None
    #: weight quantization (``int8``, ``int4``: what the backend declares), ``none`` to undo a
    #: config's; applied by the backend at load (the ONNX backend exports and caches it)
    quantize: str | None = attrs.field(
        default=None,
        validator=_check(lambda v: v.strip() != "", "must name a quantization, or be none"),
    )

    @property
    def requested_quantization(self) -> str | None:
        """What the backend is asked to apply: ``None`` when unset or ``none``."""
        return None if self.quantize in (None, NO_QUANTIZATION) else self.quantize

    @property
    def path(self) -> str | None:
        """The path the user gave (both keys accept either kind of folder)."""
        return self.checkpoint if self.checkpoint is not None else self.output_dir


@attrs.frozen(kw_only=True)
class GenerationSpec:
    """Sampling parameters as one layer states them; ``None`` falls through to lower layers."""

    max_new_tokens: int | None = attrs.field(
        default=None, validator=_check(lambda v: v >= 1, "must be >= 1, got {value}")
    )
    temperature: float | None = attrs.field(
        default=None,
        validator=[
            _check(lambda v: v > 0, "must be > 0, got {value}"),
            _check(
                lambda v: v <= 0 or v >= MIN_TEMPERATURE,
                f"must be at least {MIN_TEMPERATURE:g}, got {{value}} (below that, scaled "
                "logits overflow; for argmax decoding use greedy)",
            ),
        ],
    )
    top_k: int | None = attrs.field(
        default=None, validator=_check(lambda v: v >= 0, "must be >= 0 (0 disables), got {value}")
    )
    top_p: float | None = attrs.field(
        default=None, validator=_check(lambda v: 0 < v <= 1, "must be in (0, 1], got {value}")
    )
    min_p: float | None = attrs.field(
        default=None, validator=_check(lambda v: 0 <= v < 1, "must be in [0, 1), got {value}")
    )
    greedy: bool | None = None
    do_sample: bool | None = None
    repetition_penalty: float | None = attrs.field(
        default=None, validator=_check(lambda v: v > 0, "must be > 0, got {value}")
    )
    seed: int | None = attrs.field(
        default=None,
        validator=_check(lambda v: 0 <= v <= MAX_SEED, "must be in [0, 2**64), got {value}"),
    )
    return_full_text: bool | None = None
    stop: tuple[str, ...] | None = attrs.field(default=None, validator=_nonempty_strings)
    stop_token_ids: tuple[int, ...] | None = attrs.field(default=None, validator=_token_ids)
    ignore_eos: bool | None = None
    logprobs: int | None = attrs.field(
        default=None,
        validator=_check(
            lambda v: 0 <= v <= MAX_LOGPROBS, f"must be in 0..{MAX_LOGPROBS}, got {{value}}"
        ),
    )
    prompt_logprobs: int | None = attrs.field(
        default=None,
        validator=_check(
            lambda v: 0 <= v <= MAX_LOGPROBS, f"must be in 0..{MAX_LOGPROBS}, got {{value}}"
        ),
    )
    logprobs_mode: str | None = attrs.field(
        default=None,
        validator=_check(
            lambda v: v in LOGPROBS_MODES,
            f"must be one of {', '.join(LOGPROBS_MODES)}, got {{value!r}}",
        ),
    )
    n: int | None = attrs.field(
        default=None,
        validator=_check(
            lambda v: 1 <= v <= MAX_SAMPLES, f"must be in 1..{MAX_SAMPLES}, got {{value}}"
        ),
    )
    dtype: str | None = attrs.field(default=None, converter=_dtype_converter, validator=_dtype)

    def contradictions(self) -> list[tuple[str, str]]:
        """(field, message) pairs for settings that contradict each other within this block."""
        if self.greedy is not None and self.do_sample is not None and self.greedy == self.do_sample:
            return [
                (
                    "do_sample",
                    f"contradicts greedy={str(self.greedy).lower()} "
                    "(do_sample is the inverse of greedy; give one of them)",
                )
            ]
        return []

    def normalized(self) -> GenerationSpec:
        """``do_sample`` folded into ``greedy`` (call after checking contradictions)."""
        if self.do_sample is None:
            return self
        return attrs.evolve(self, greedy=not self.do_sample, do_sample=None)


@attrs.frozen(kw_only=True)
class GenerationParams:
    """Fully resolved sampling parameters of one record (what runs, and what is echoed)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    greedy: bool
    repetition_penalty: float
    seed: int
    return_full_text: bool
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    #: Per generated token: its logprob and the top ``logprobs`` alternatives (None: not asked).
    logprobs: int | None = None
    #: The same for every prompt token after the first (None: not asked).
    prompt_logprobs: int | None = None
    logprobs_mode: str = "raw"
    #: Samples of this record, each with its own seed (the first: ``seed``).
    n: int = 1

    def to_fields(self) -> dict[str, Any]:
        """Every field by name (``GenerationParams(**fields)`` makes an equal instance)."""
        return {field.name: getattr(self, field.name) for field in attrs.fields(type(self))}

    def to_json(self) -> dict[str, Any]:
        """The effective ``generation`` block of the output (every key, seed included)."""
        out = attrs.asdict(self)
        out["stop"] = list(self.stop)
        out["stop_token_ids"] = list(self.stop_token_ids)
        for key, default in QUIET_DEFAULTS.items():
            if out[key] == default:
                del out[key]
        return out


#: The trainer CLI's defaults, so sweeps behave as its users expect.
BUILTIN_GENERATION = GenerationSpec(
    max_new_tokens=100,
    temperature=0.8,
    top_k=50,
    top_p=0.95,
    min_p=0.0,
    greedy=False,
    repetition_penalty=1.0,
    return_full_text=False,
    stop=(),
    stop_token_ids=(),
    ignore_eos=False,
    logprobs_mode="raw",
    n=1,
)

Block = TypeVar("Block", ModelSpec, GenerationSpec)


def stack(*layers: Block | None) -> Block:
    """Merge layers field by field; later layers win where they say something."""
    present = [layer for layer in layers if layer is not None]
    merged: dict[str, Any] = {}
    for layer in present:
        for field in attrs.fields(type(layer)):
            value = getattr(layer, field.name)
            if value is not None:
                merged[field.name] = value
    return type(present[0])(**merged)


def resolve_generation(spec: GenerationSpec, seed: int) -> GenerationParams:
    """Turn a stacked spec (built-ins at the bottom) into the parameters that run."""
    values = {f.name: getattr(spec, f.name) for f in attrs.fields(GenerationParams)}
    values["seed"] = seed
    return GenerationParams(**values)
