"""Plugin hooks: the manual of a plugin author.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, published through
the ``gpt_simple`` entry-point group in its ``pyproject.toml``::

    [project.entry-points.gpt_simple]
    my-backend = "my_package.plugin"

The module also declares the plugin API version it was written for, and may name plugins it
cannot work without (loaded with it even when ``GPT_SIMPLE_PLUGINS`` does not name them)::

    GPT_SIMPLE_PLUGIN_API = 1
    GPT_SIMPLE_PLUGIN_REQUIRES = ("gpt-simple-lm",)

Everything a plugin needs is importable from :mod:`gpt_simple.plugins`. Built-in backends and
formats are registered the same way and have no privileges. Set ``GPT_SIMPLE_PLUGINS`` to a
comma-separated list of entry-point names to load only those (empty: none), for reproducible
runs or to rule out a broken plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from gpt_simple_core.checkpoints.info import CheckpointInfo
    from gpt_simple_core.protocol import Backend, Exporter, Format

PROJECT = "gpt_simple"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gpt_simple_register_backends(register: Callable[[Backend], None]) -> None:
    """Register backends by calling ``register(backend)`` once per :class:`Backend` instance.

    Called once, when the plugin manager starts. Keep it cheap: do not import the runtime here;
    import it inside ``Backend.load``.
    """


@hookspec(firstresult=True)
def gpt_simple_inspect_checkpoint(
    path: Path, tokenizer: Path | None, load_tokenizer: bool
) -> CheckpointInfo | None:
    """Claim ``path`` if it is a checkpoint in a format this plugin knows, else return ``None``.

    ``path`` is absolute with ``~`` and variables expanded; ``tokenizer`` is the user's
    override (absolute) or ``None`` to look beside the checkpoint. Claim only what is
    unambiguously yours: the first non-``None`` answer wins. Once claimed, check everything a
    run needs except the weights themselves (config parses, weights file present with a
    plausible size, tokenizer found, and loaded when ``load_tokenizer`` is true) and raise
    :class:`~gpt_simple_core.errors.CheckpointError` naming the paths tried when something is
    wrong. Never load weights and never import a heavy runtime here: the dry-run calls it.
    """


@hookspec
def gpt_simple_register_exporters(register: Callable[[Exporter], None]) -> None:
    """Register checkpoint exporters (``gpt-simple export --format NAME``) by calling
    ``register(exporter)`` once per :class:`~gpt_simple_core.protocol.Exporter`."""


@hookspec
def gpt_simple_register_formats(register: Callable[[Format], None]) -> None:
    """Register the checkpoint formats this plugin claims in ``gpt_simple_inspect_checkpoint``
    by calling ``register(Format(...))`` once per format: ``gpt-simple backends`` lists them,
    and a user with a checkpoint no installed backend runs is told what to install."""
