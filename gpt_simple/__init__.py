"""gpt-simple: run trained GPT-style checkpoints.

The public Python API. Shapes follow the gpt-simple trainer's own API, so scripts written for
it keep working::

    from gpt_simple import generate, load_for_inference, stream

    model, tokenizer, config = load_for_inference("runs/my-run", dtype="fp32")
    print(generate(model, tokenizer, ["The assert statement"], do_sample=False)[0])
    for piece in stream(model, tokenizer, "The try statement", do_sample=False):
        print(piece, end="", flush=True)

Plugin authors import from :mod:`gpt_simple.plugins` instead. The API functions are imported
on first use, so ``import gpt_simple.plugins`` (what every plugin does, even for a dry-run)
does not load the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gpt_simple_core import __version__
from gpt_simple_core.errors import (
    BackendError,
    CheckpointError,
    ConfigError,
    GenerationError,
    GptSimpleError,
    TokenizerError,
)

if TYPE_CHECKING:
    from gpt_simple_core.api import (
        StreamEvent,
        ValidatedCheckpoint,
        batch_generate,
        generate,
        generate_records,
        load_for_inference,
        run_on_ray,
        score,
        stream,
        validate_checkpoint,
    )

_API = {
    "StreamEvent",
    "ValidatedCheckpoint",
    "batch_generate",
    "generate",
    "generate_records",
    "load_for_inference",
    "run_on_ray",
    "score",
    "stream",
    "validate_checkpoint",
}

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "GenerationError",
    "GptSimpleError",
    "StreamEvent",
    "TokenizerError",
    "ValidatedCheckpoint",
    "__version__",
    "batch_generate",
    "generate",
    "generate_records",
    "load_for_inference",
    "run_on_ray",
    "score",
    "stream",
    "validate_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("gpt_simple_core.api"), name)
    raise AttributeError(f"module 'gpt_simple' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
