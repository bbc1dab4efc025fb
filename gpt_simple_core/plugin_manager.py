"""Loading plugins and asking them questions.

One :class:`pluggy.PluginManager` per process, built on first use: the core's own format
detector, then every module of the ``gpt_simple`` entry-point group (or only those named in
``GPT_SIMPLE_PLUGINS``). A plugin that fails to import is reported, not fatal: the rest of the
tool keeps working and ``gpt-simple backends`` shows the error.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import pluggy
import structlog

from gpt_simple_core import hookspecs, logs
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.errors import BackendError
from gpt_simple_core.protocol import Backend, Exporter

ENTRY_POINT_GROUP = "gpt_simple"
PINS_ENV_VAR = "GPT_SIMPLE_PLUGINS"

log = structlog.get_logger(__name__)

_manager: pluggy.PluginManager | None = None
#: entry-point name -> why it could not be loaded
plugin_errors: dict[str, str] = {}


def _pinned_names() -> set[str] | None:
    raw = os.environ.get(PINS_ENV_VAR)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _core_plugins() -> list[ModuleType]:
    from gpt_simple_core.checkpoints import gpt_simple_layout

    return [gpt_simple_layout]


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with plugins loaded on first call."""
    global _manager
    if _manager is None:
        logs.ensure_configured()
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        for module in _core_plugins():
            manager.register(module, name=f"core:{module.__name__.rsplit('.', 1)[-1]}")
        _load_entry_points(manager)
        _manager = manager
    return _manager


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    pins = _pinned_names()
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if pins is not None and entry_point.name not in pins:
            continue
        if manager.has_plugin(entry_point.name):
            continue  # one distribution installed twice (e.g. editable and regular)
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
        except Exception as exc:  # a broken plugin must not take the tool down
            plugin_errors[entry_point.name] = f"{type(exc).__name__}: {exc}"
            log.warning("plugin failed to load", plugin=entry_point.name, error=str(exc))
    if pins:
        loaded = {name for name, _ in manager.list_name_plugin()}
        for name in sorted(pins - loaded - set(plugin_errors)):
            plugin_errors[name] = f"named in {PINS_ENV_VAR} but not installed"


def reset_plugin_manager() -> None:
    """Forget the plugin manager so the next call rebuilds it (for tests)."""
    global _manager
    _manager = None
    plugin_errors.clear()


def get_backends() -> dict[str, Backend]:
    """Every registered backend by name; a second backend claiming a taken name is an error."""
    found: dict[str, Backend] = {}

    def register(backend: Backend) -> None:
        if not isinstance(backend, Backend):
            raise BackendError(f"a plugin registered {backend!r}, which is not a Backend")
        if backend.name in found:
            raise BackendError(
                f"two plugins register a backend named {backend.name!r}: "
                f"{type(found[backend.name]).__module__} and {type(backend).__module__}"
            )
        found[backend.name] = backend

    get_plugin_manager().hook.gpt_simple_register_backends(register=register)
    return found


def get_exporters() -> dict[str, Exporter]:
    """Every registered exporter by ``--format`` name."""
    found: dict[str, Exporter] = {}

    def register(exporter: Exporter) -> None:
        if exporter.name in found:
            raise BackendError(f"two plugins register an exporter named {exporter.name!r}")
        found[exporter.name] = exporter

    get_plugin_manager().hook.gpt_simple_register_exporters(register=register)
    return found


def inspect_checkpoint(
    path: Path, tokenizer: Path | None = None, *, load_tokenizer: bool = True
) -> CheckpointInfo | None:
    """Ask the format plugins to claim ``path`` (absolute); ``None`` when none does."""
    return get_plugin_manager().hook.gpt_simple_inspect_checkpoint(
        path=path, tokenizer=tokenizer, load_tokenizer=load_tokenizer
    )
