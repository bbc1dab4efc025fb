"""Exceptions shared by the core and backends.

Everything a user can cause (bad input, a broken checkpoint) is a :class:`GptSimpleError`;
the CLI prints its message without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class GptSimpleError(Exception):
    """Base class of every error caused by input rather than by a bug."""


class CheckpointError(GptSimpleError):
    """A path does not resolve to a usable checkpoint (the message names the paths tried)."""


class TokenizerError(CheckpointError):
    """A tokenizer is missing or cannot be loaded."""


class ConfigError(GptSimpleError):
    """A configuration file or command-line value is invalid."""


class BackendError(GptSimpleError):
    """No installed backend can run a request, or a backend refused it at pre-flight."""


class GenerationError(GptSimpleError):
    """A single record cannot be generated (it gets an ``error`` entry; the run goes on)."""
