"""The contract between the core and a backend.

The core owns everything that is the same for every runtime: parsing and planning, the decode
loop, sampling, stopping, seeds, batching and ordered output. A backend supplies only the math:

* a :class:`Backend` says what it can run (formats, dtypes, devices), checks a request at
  pre-flight without importing anything heavy, and loads a checkpoint into a
  :class:`LoadedModel`;
* a :class:`LoadedModel` owns a :class:`Tokenizer` and one operation, :meth:`LoadedModel.forward`:
  append new tokens to some rows and return each row's next-token logits. Rows are small
  integers chosen by the core ("slots"); the backend keeps whatever per-row state it has (a KV
  cache, or just the ids when it recomputes a window) until the core calls
  :meth:`LoadedModel.release`.

Backends register through the ``gpt_simple_register_backends`` hook
(:mod:`gpt_simple_core.hookspecs`); ``plugins/`` holds a complete example.
"""

from __future__ import annotations

import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    import numpy as np

    from gpt_simple_core.checkpoints.info import CheckpointInfo

#: Formats a backend runs when no backend is named ("auto"), or only when asked ("explicit",
#: e.g. ONNX on a gpt-simple checkpoint, which means an export first).
AUTO = "auto"
EXPLICIT = "explicit"

#: How a model handles a row longer than its context length; reported in ``meta``.
OVERFLOW_EXTRAPOLATE = "extrapolate"  # keeps going past the trained context (RoPE)
OVERFLOW_TRUNCATE = "truncate"  # recomputes over the last context_length tokens
OVERFLOW_WINDOW = "window"  # the architecture always runs a fixed sliding window


@runtime_checkable
class Tokenizer(Protocol):
    """What the core needs from a tokenizer.

    ``len(tokenizer)`` is the full vocabulary the tokenizer can produce (added tokens
    included). Logit columns at or above it (a padding band up to the model's vocab size) are
    never sampled; neither are the ids in :attr:`never_generate`.
    """

    eos_token_id: int | None
    pad_token_id: int | None
    never_generate: tuple[int, ...]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model was trained to see it."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        ...

    def __len__(self) -> int: ...


#: The plugin API this core provides. A plugin module declares the version it was written for
#: as ``GPT_SIMPLE_PLUGIN_API = 1``; the registry refuses (and ``gpt-simple backends`` reports)
#: a plugin written for another one. Raised only for changes that break existing plugins.
PLUGIN_API = 1

_DEVICE = re.compile(r"^(?P<kind>[a-z][a-z0-9_]*)(?::(?P<index>\d+))?$")
_DTYPE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")

#: Aliases the core normalises; any other well-formed name passes through to the backends,
#: which declare what they run (a plugin may add ``q4_k_m``, say).
DTYPE_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "f32": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "auto": AUTO,
}
#: Bytes per parameter of the dtypes the core knows, for the plan's memory estimate.
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def normalize_dtype(value: str) -> str:
    """Canonical name of a dtype: aliases folded (``bfloat16`` -> ``bf16``), anything else
    lower-cased. Raises ``ValueError`` only for a malformed name; whether a backend runs it is
    the backend's declaration (checked at pre-flight)."""
    name = value.strip().lower()
    if name in DTYPE_ALIASES:
        return DTYPE_ALIASES[name]
    if not _DTYPE.match(name):
        raise ValueError(
            f"malformed dtype {value!r} (fp32, fp16, bf16, auto, or a name a backend declares)"
        )
    return name


class Device(str):
    """A device as the core parsed it, once: ``kind`` and ``index`` (``cuda:1`` -> ``cuda``, 1).

    A ``str`` (``Device("cuda:1") == "cuda:1"``), so it passes to runtimes as it is. The kind
    is open: the core checks the syntax, backends declare the kinds they run (``cpu``,
    ``cuda``, ``mps``, or a plugin's own such as ``vulkan``).
    """

    def __new__(cls, value: str) -> Device:
        text = value.strip().lower()
        if not _DEVICE.match(text):
            raise ValueError(
                f"malformed device {value!r} (auto, or KIND[:N] such as cpu, cuda, cuda:1, mps)"
            )
        return super().__new__(cls, text)

    @property
    def kind(self) -> str:
        return self.partition(":")[0]

    @property
    def index(self) -> int | None:
        _, _, index = self.partition(":")
        return int(index) if index else None

    @property
    def is_auto(self) -> bool:
        return self.kind == AUTO


AUTO_DEVICE = Device(AUTO)


def _device(value: str | Device) -> Device:
    return value if isinstance(value, Device) else Device(value)


@attrs.frozen
class LoadRequest:
    """How to load a checkpoint: what the record, the config and the CLI asked for.

    ``dtype`` is a normalised name (:func:`normalize_dtype`) or ``auto``; ``device`` a
    :class:`Device` (``auto`` until :meth:`Backend.resolve`). ``context_overflow`` is the
    policy asked for, ``None`` for the backend's default. ``options`` is an instance of the
    backend's :attr:`Backend.Options` (``None`` for a backend without options), validated by
    the core from ``[backend.NAME]`` config tables and the record's ``model.options``.
    ``quantize`` names a weight quantization the backend declares
    (:attr:`Backend.quantizations`), ``None`` for none.
    """

    dtype: str = AUTO
    device: Device = attrs.field(default=AUTO_DEVICE, converter=_device)
    threads: int | None = None
    context_overflow: str | None = None
    options: Any = None
    quantize: str | None = None


@attrs.frozen
class PreflightProblem:
    """Why a request cannot run, and which input field says so (for ``file:line: field:``)."""

    message: str
    field: str = "model.backend"

    def __str__(self) -> str:
        return self.message


def _problems(values: Any) -> tuple[PreflightProblem, ...]:
    return tuple(v if isinstance(v, PreflightProblem) else PreflightProblem(v) for v in values)


@attrs.frozen
class Preflight:
    """The outcome of a cheap check of a request against a checkpoint.

    ``problems`` make the request impossible: each says why and what would work instead (a
    plain string is a problem of ``model.backend``; a :class:`PreflightProblem` names its
    field). ``warnings`` are shown in the plan and on stderr of a real run, and do not stop it;
    ``notes`` are facts worth a line in the plan (an export found in a cache), logged at info.
    """

    problems: tuple[PreflightProblem, ...] = attrs.field(default=(), converter=_problems)
    warnings: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    notes: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def __add__(self, other: Preflight) -> Preflight:
        return Preflight(
            self.problems + other.problems,
            self.warnings + other.warnings,
            self.notes + other.notes,
        )


@attrs.frozen
class Format:
    """A checkpoint format a plugin claims (``gpt_simple_register_formats``).

    ``install_hint`` is what to tell a user who has a checkpoint of this format but no backend
    that runs it (e.g. ``pip install 'gpt-simple-inference[torch]'``).
    """

    name: str
    description: str
    install_hint: str | None = None


class LoadedModel(ABC):
    """A model in memory, driven by the core's decode loop.

    Subclasses set the attributes in ``__init__``:

    * ``tokenizer``: a :class:`Tokenizer`;
    * ``dtype`` and ``device``: what actually ran (``auto`` resolved), echoed in ``meta``;
    * ``context_length``: positions the model was trained for, or ``None`` if unbounded;
    * ``context_overflow``: one of the ``OVERFLOW_*`` policies, what happens past it;
    * ``notes``: JSON-ready facts about this model for every record's ``meta``;
    * ``prefill_in_chunks``: whether a long prompt may arrive over several calls (set it to
      False when the first call must see the whole prompt, e.g. to trim it to a window).

    Optional sizes the core plans batches with (see :mod:`gpt_simple_core.engine.capacity`);
    leave them ``None`` and the core uses fixed defaults (16 rows, 4096 tokens per call):

    * ``kv_bytes_per_token``: bytes of per-row state one token adds (the KV cache:
      ``ModelConfig.kv_bytes_per_token``); with it the number of rows follows from the budget;
    * ``memory_budget``: bytes the backend may spend on that state plus one call's
      activations (e.g. free GPU memory); default: a quarter of the available RAM, at most
      4 GiB;
    * ``activation_bytes_per_token``: transient bytes one token of a forward call needs
      (hidden states, attention scores at the longest context); sets the tokens per call;
    * ``max_batch_size``: the most rows worth running together (default 64: on CPUs larger
      batches stop paying off; a GPU backend may raise it).

    ``--batch-size`` and ``--max-batch-tokens`` override what the sizes imply.
    """

    tokenizer: Tokenizer
    dtype: str
    device: str
    context_length: int | None = None
    context_overflow: str = OVERFLOW_EXTRAPOLATE
    notes: Mapping[str, Any] = {}
    prefill_in_chunks: bool = True
    kv_bytes_per_token: int | None = None
    memory_budget: int | None = None
    activation_bytes_per_token: int | None = None
    max_batch_size: int | None = None

    @abstractmethod
    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        """Append ``tokens[i]`` to row ``rows[i]`` and return next-token logits.

        A row not seen since it was last released starts empty, so its first call carries its
        whole prompt (or its first chunk, unless ``prefill_in_chunks`` is False); later calls
        usually carry one token. Rows in
        one call may have different numbers of new tokens. Returns a float32 array of shape
        ``[len(rows), vocab]``: the logits at the last position of each row, in ``rows`` order.
        The array then belongs to the core, which may modify it in place (return a fresh one,
        not a buffer the backend reuses). Row ids are small non-negative integers below the
        core's batch size.
        """

    #: Whether :meth:`copy_row` works: the engine then prefills a prompt shared by several
    #: rows (the samples of a record with ``generation.n`` > 1) once, and copies its state.
    copies_rows: bool = False

    def copy_row(self, source: int, targets: Sequence[int]) -> None:
        """Give each row of ``targets`` (rows not in use) a copy of row ``source``'s state,
        so that feeding it next is as if it had been fed ``source``'s tokens. Only called when
        :attr:`copies_rows` is true."""
        raise NotImplementedError(f"{type(self).__name__} does not copy rows")

    def forward_all(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Like :meth:`forward`, but the logits after *every* new token: one float32 array
        ``[len(tokens[i]), vocab]`` per row (prompt log-probabilities and scoring need them).

        The default feeds the tokens one at a time through :meth:`forward`: right for any
        backend, one call per token. A backend that computes every position in one call
        anyway (a prefill does) should override it.
        """
        import numpy as np

        out: list[list[np.ndarray]] = [[] for _ in rows]
        for step in range(max(len(new) for new in tokens)):
            live = [i for i, new in enumerate(tokens) if step < len(new)]
            logits = self.forward([rows[i] for i in live], [[tokens[i][step]] for i in live])
            for k, i in enumerate(live):
                out[i].append(logits[k])
        return [np.stack(row) for row in out]

    @staticmethod
    def check_forward_arguments(rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> None:
        """Raise ``ValueError`` unless ``forward``'s arguments keep its contract (one token list
        per row, distinct non-negative rows, at least one token each): for backends to call
        first, so a caller's mistake reads as one rather than as a shape error deep inside."""
        if len(rows) != len(tokens):
            raise ValueError(f"{len(rows)} rows but {len(tokens)} token lists")
        if len(set(rows)) != len(rows) or any(r < 0 for r in rows):
            raise ValueError(f"rows must be distinct non-negative integers, got {list(rows)}")
        if any(len(new) == 0 for new in tokens):
            raise ValueError("every row needs at least one new token")

    def reserve(self, rows: int, max_tokens: int) -> None:  # noqa: B027 - an optional hint
        """Called once before decoding: row ids will stay below ``rows`` and rows will reach
        about ``max_tokens`` tokens, so a cache can be allocated once instead of growing. A
        hint only: a row may still grow past it."""

    def release(self, rows: Sequence[int]) -> None:  # noqa: B027 - optional for stateless backends
        """Forget the state of ``rows``; their ids may be reused for new sequences."""

    def close(self) -> None:  # noqa: B027 - optional: garbage collection frees most backends
        """Free the model. The core calls it before loading the next one."""

    def public_model(self) -> Any:
        """What ``gpt_simple.load_for_inference`` hands to users: by default this object.

        The PyTorch backend returns its ``nn.Module`` instead, as the trainer's API did.
        """
        return self


class Backend(ABC):
    """A runtime that can load checkpoints. Subclass it and register an instance.

    Class attributes declare what it runs; ``gpt-simple backends`` shows them, and the core
    checks every request against them before the backend sees it (:meth:`preflight` adds only
    what is specific to the backend):

    * ``name``: what records and ``--backend`` call it;
    * ``formats``: checkpoint format -> :data:`AUTO` (chosen automatically for that format) or
      :data:`EXPLICIT` (used only when named);
    * ``priority``: among installed backends with :data:`AUTO` for a format, the highest wins;
    * ``dtypes`` and ``devices``: the dtypes and device kinds :meth:`load` accepts (besides
      ``auto``); any name (``q4_k_m``, ``vulkan``) is the backend's to declare;
    * ``quantizations``: the weight quantizations it can apply (``model.quantize``, e.g.
      ``int8``, ``int4``); the names are the backend's to declare, none by default;
    * ``context_overflow``: the policies it can apply past the model's context, its default
      first. A backend whose architecture fixes one (``(OVERFLOW_WINDOW,)``) gets a warning,
      not a problem, when a user asks for another;
    * ``Options``: an attrs class of the backend's own settings (``n_gpu_layers: int = 0``),
      filled from ``[backend.NAME]`` config tables and each record's ``model.options``,
      validated at plan time like every other field; ``None``: the backend takes none;
    * ``requires``: import names the backend needs; looked up, never imported, when planning;
    * ``extra``: the extra of the backend's distribution that installs ``requires`` (the hint
      for a missing dependency says ``pip install 'DIST[EXTRA]'``);
    * ``refusals``: explanations the core appends when it refuses a value, keyed
      ``"dtype"``/``"device"``/``"quantize"`` or ``"dtype:bf16"`` for one value.
    """

    name: ClassVar[str]
    formats: ClassVar[Mapping[str, str]]
    priority: ClassVar[int] = 0
    dtypes: ClassVar[tuple[str, ...]] = ("fp32",)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    quantizations: ClassVar[tuple[str, ...]] = ()
    context_overflow: ClassVar[tuple[str, ...]] = (OVERFLOW_EXTRAPOLATE,)
    Options: ClassVar[type | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    refusals: ClassVar[Mapping[str, str]] = {}

    def missing_dependencies(self) -> list[str]:
        """Import names from ``requires`` that are not installed (nothing is imported)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def preflight(self, checkpoint: CheckpointInfo, request: LoadRequest) -> Preflight:
        """Backend-specific checks of ``request`` against ``checkpoint``, without loading or
        importing anything heavy (a dry-run calls it).

        The core has already checked the dependencies, the dtype, device kind, overflow
        policy and options against the declarations above; it calls this before every
        :meth:`load`, again with the resolved request when :meth:`resolve` changed it. Add
        what only this backend knows (a combination it refuses, a cache to build). The
        default finds nothing.
        """
        return Preflight()

    def resolve(self, request: LoadRequest) -> LoadRequest:
        """Resolve ``auto`` dtype and device, as :meth:`load` would.

        Called at run time only (it may import the runtime to look for a GPU). The core merges
        groups whose resolved requests are equal, so a checkpoint never loads twice.
        """
        return request

    @abstractmethod
    def load(self, checkpoint: CheckpointInfo, request: LoadRequest) -> LoadedModel:
        """Load ``checkpoint`` as ``request`` says and return it ready to generate. The
        request has passed pre-flight (the core's checks and :meth:`preflight`)."""

    def adopt(self, model: Any, tokenizer: Any) -> LoadedModel | None:
        """Wrap an object this backend's :meth:`LoadedModel.public_model` returned (so
        ``gpt_simple.generate(model, tokenizer, ...)`` accepts it); ``None`` if not ours."""
        return None

    def weight_bytes(self, checkpoint: CheckpointInfo, dtype: str) -> int | None:
        """Estimated bytes of the weights in memory, for the plan (``None``: unknown)."""
        per_param = DTYPE_BYTES.get(dtype if dtype != AUTO else "fp32")
        if checkpoint.param_count is None or per_param is None:
            return None
        return checkpoint.param_count * per_param

    def describe_runtime(self) -> dict[str, Any]:
        """Extra facts for ``gpt-simple backends`` (e.g. execution providers). Called only
        when the dependencies are installed; may import the runtime."""
        return {}


@attrs.frozen
class ExportOptions:
    """What ``gpt-simple export`` asks for; exporters reject what they cannot do."""

    dtype: str = "fp32"
    quantize: str | None = None
    opset: int | None = None


class Exporter(ABC):
    """Writes a checkpoint in another format (``gpt-simple export CHECKPOINT --format NAME``).

    ``name`` is the ``--format`` value; ``formats`` the source checkpoint formats it reads;
    ``requires`` the import names it needs (checked before exporting) and ``extra`` the extra
    of its distribution that installs them.
    """

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def missing_dependencies(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    @abstractmethod
    def export(
        self, checkpoint: CheckpointInfo, out: Path, options: ExportOptions
    ) -> Mapping[str, Any]:
        """Write the export into ``out`` (a new folder) and return a JSON-ready summary."""
