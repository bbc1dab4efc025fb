"""gpt-simple: run trained GPT-style checkpoints.

The public Python API. Shapes follow the gpt-simple trainer's own API, so scripts written for
it keep working::

    from gpt_simple import load_for_inference, generate

    model, tokenizer, config = load_for_inference("runs/my-run", dtype="fp32")
    print(generate(model, tokenizer, ["The assert statement"], do_sample=False)[0])
"""

from gpt_simple_core import __version__
from gpt_simple_core.api import (
    ValidatedCheckpoint,
    generate,
    generate_records,
    load_for_inference,
    validate_checkpoint,
)
from gpt_simple_core.errors import (
    BackendError,
    CheckpointError,
    ConfigError,
    GenerationError,
    GptSimpleError,
    TokenizerError,
)

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "GenerationError",
    "GptSimpleError",
    "TokenizerError",
    "ValidatedCheckpoint",
    "__version__",
    "generate",
    "generate_records",
    "load_for_inference",
    "validate_checkpoint",
]
