"""The plugin author's API: everything a backend or format plugin needs, in one versioned place.

A plugin imports only from here (never from ``gpt_simple_core``, whose modules may move), and
declares the plugin API it was written for in the module its entry point names::

    from gpt_simple.plugins import AUTO, Backend, LoadedModel, hookimpl

    GPT_SIMPLE_PLUGIN_API = 1  # the literal number: what this plugin was written against

:data:`PLUGIN_API` is the version this gpt-simple provides; the registry refuses a plugin
declaring another one (``gpt-simple backends`` says so) instead of crashing on it later. The
hooks are documented in :mod:`gpt_simple_core.hookspecs` and docs/writing-a-backend.md.
"""

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.cpus import usable_cpus
from gpt_simple_core.errors import (
    BackendError,
    CheckpointError,
    ConfigError,
    GenerationError,
    GptSimpleError,
    TokenizerError,
)
from gpt_simple_core.hookspecs import hookimpl
from gpt_simple_core.install import install_command
from gpt_simple_core.protocol import (
    AUTO,
    AUTO_DEVICE,
    DTYPE_BYTES,
    EXPLICIT,
    OVERFLOW_EXTRAPOLATE,
    OVERFLOW_TRUNCATE,
    OVERFLOW_WINDOW,
    PLUGIN_API,
    Backend,
    Device,
    Exporter,
    ExportOptions,
    Format,
    LoadedModel,
    LoadRequest,
    Preflight,
    PreflightProblem,
    Tokenizer,
    normalize_dtype,
)
from gpt_simple_core.strict_json import loads as loads_json
from gpt_simple_core.strict_json import read as read_json

__all__ = [
    "AUTO",
    "AUTO_DEVICE",
    "DTYPE_BYTES",
    "EXPLICIT",
    "OVERFLOW_EXTRAPOLATE",
    "OVERFLOW_TRUNCATE",
    "OVERFLOW_WINDOW",
    "PLUGIN_API",
    "Backend",
    "BackendError",
    "CheckpointError",
    "CheckpointInfo",
    "ConfigError",
    "Device",
    "ExportOptions",
    "Exporter",
    "Format",
    "GenerationError",
    "GptSimpleError",
    "LoadRequest",
    "LoadedModel",
    "Preflight",
    "PreflightProblem",
    "Tokenizer",
    "TokenizerError",
    "hookimpl",
    "install_command",
    "loads_json",
    "normalize_dtype",
    "read_json",
    "usable_cpus",
]
