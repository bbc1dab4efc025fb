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


@attrs.frozen
class LoadRequest:
    """How to load a checkpoint: what the record, the config and the CLI asked for.

    ``dtype`` is a normalised name (``fp32``, ``fp16``, ``bf16``) or ``auto``; ``device`` is
    ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``. ``options`` carries backend-specific
    settings from the command line or config (for example ``context_overflow``).
    """

    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Preflight:
    """The outcome of a cheap check of a request against a checkpoint.

    ``problems`` make the request impossible: each says why and what would work instead.
    ``warnings`` are shown in the plan and do not stop the run.
    """

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


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

    Class attributes describe capabilities; they are shown by ``gpt-simple backends`` and used
    to choose a backend per record:

    * ``name``: what records and ``--backend`` call it;
    * ``formats``: checkpoint format -> :data:`AUTO` (chosen automatically for that format) or
      :data:`EXPLICIT` (used only when named);
    * ``priority``: among installed backends with :data:`AUTO` for a format, the highest wins;
    * ``dtypes`` and ``devices``: what :meth:`load` accepts (besides ``auto``);
    * ``requires``: import names the backend needs; they are looked up, never imported, when
      planning.
    """

    name: ClassVar[str]
    formats: ClassVar[Mapping[str, str]]
    priority: ClassVar[int] = 0
    dtypes: ClassVar[tuple[str, ...]] = ("fp32",)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    requires: ClassVar[tuple[str, ...]] = ()

    def missing_dependencies(self) -> list[str]:
        """Import names from ``requires`` that are not installed (nothing is imported)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def preflight(self, checkpoint: CheckpointInfo, request: LoadRequest) -> Preflight:
        """Check ``request`` against ``checkpoint`` without loading or importing anything heavy.

        The default checks the dtype and device lists and the dependencies; override to add
        format-specific checks (call ``super().preflight`` first).
        """
        problems = []
        missing = self.missing_dependencies()
        if missing:
            problems.append(
                f"backend {self.name!r} needs {', '.join(missing)}, which is not installed "
                f"(pip install 'gpt-simple-inference[{self.name}]')"
            )
        if request.dtype != "auto" and request.dtype not in self.dtypes:
            problems.append(
                f"backend {self.name!r} cannot run dtype {request.dtype} "
                f"(it runs {', '.join(self.dtypes)})"
            )
        device_kind = request.device.split(":", 1)[0]
        if request.device != "auto" and device_kind not in self.devices:
            problems.append(
                f"backend {self.name!r} cannot run on {request.device} "
                f"(it runs on {', '.join(self.devices)})"
            )
        return Preflight(problems=tuple(problems))

    def resolve(self, request: LoadRequest) -> LoadRequest:
        """Resolve ``auto`` dtype and device, as :meth:`load` would.

        Called at run time only (it may import the runtime to look for a GPU). The core merges
        groups whose resolved requests are equal, so a checkpoint never loads twice.
        """
        return request

    @abstractmethod
    def load(self, checkpoint: CheckpointInfo, request: LoadRequest) -> LoadedModel:
        """Load ``checkpoint`` as ``request`` says and return it ready to generate."""

    def adopt(self, model: Any, tokenizer: Any) -> LoadedModel | None:
        """Wrap an object this backend's :meth:`LoadedModel.public_model` returned (so
        ``gpt_simple.generate(model, tokenizer, ...)`` accepts it); ``None`` if not ours."""
        return None

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
    ``requires`` the import names it needs (checked before exporting).
    """

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    requires: ClassVar[tuple[str, ...]] = ()

    def missing_dependencies(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    @abstractmethod
    def export(
        self, checkpoint: CheckpointInfo, out: Path, options: ExportOptions
    ) -> Mapping[str, Any]:
        """Write the export into ``out`` (a new folder) and return a JSON-ready summary."""
