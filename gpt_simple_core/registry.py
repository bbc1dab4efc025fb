"""The plugin registry: every backend, exporter and format the installed plugins provide.

Built once (:meth:`Registry.discover`) and immutable afterwards: a :class:`Session` gets one
explicitly, the CLI builds one per command, and the Python API uses :func:`default_registry`,
built on first use. Discovery loads every module of the ``gpt_simple`` entry-point group (or
only those named in ``GPT_SIMPLE_PLUGINS``, plus the plugins they require). A plugin that fails
to import, is written for another plugin API, or registers something broken is reported on the
registry (``plugin_errors``, shown by ``gpt-simple backends``), never fatal: the rest of the
tool keeps working.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import pluggy
import structlog

from gpt_simple_core import hookspecs, logs
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.install import install_command
from gpt_simple_core.protocol import PLUGIN_API, Backend, Exporter, Format

ENTRY_POINT_GROUP = "gpt_simple"
PINS_ENV_VAR = "GPT_SIMPLE_PLUGINS"
API_ATTRIBUTE = "GPT_SIMPLE_PLUGIN_API"
REQUIRES_ATTRIBUTE = "GPT_SIMPLE_PLUGIN_REQUIRES"

log = structlog.get_logger(__name__)


def pinned_names(raw: str | None = None) -> set[str] | None:
    """The plugin names ``GPT_SIMPLE_PLUGINS`` pins (``None``: unset, load every plugin)."""
    raw = os.environ.get(PINS_ENV_VAR) if raw is None else raw
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


@attrs.frozen
class PluginSource:
    """Where a registered plugin came from: its entry-point name and distribution."""

    name: str
    distribution: str | None = None
    version: str | None = None


@attrs.frozen(eq=False)
class Registry:
    """What the plugins registered, by name, and why any plugin was not loaded.

    ``sources`` maps each backend, exporter and format name to the plugin that registered it,
    so messages can name the plugin's own distribution.
    """

    backends: Mapping[str, Backend]
    exporters: Mapping[str, Exporter]
    formats: Mapping[str, Format]
    plugin_errors: Mapping[str, str]
    sources: Mapping[str, PluginSource]
    _manager: pluggy.PluginManager = attrs.field(repr=False)

    @classmethod
    def discover(
        cls,
        *,
        pins: Iterable[str] | str | None = "environment",
        extra_plugins: Sequence[Any] = (),
        group: str = ENTRY_POINT_GROUP,
    ) -> Registry:
        """Load the entry-point plugins (``pins``: the names to load, ``None`` for all; by
        default ``GPT_SIMPLE_PLUGINS``) and ``extra_plugins`` (objects or modules with hook
        implementations, e.g. a test's own backend), then collect what they register."""
        logs.ensure_configured(level="warning")  # never structlog's default: it prints to stdout
        chosen = pinned_names() if pins == "environment" else (None if pins is None else set(pins))
        loader = _Loader(group, chosen)
        loader.load_entry_points()
        for number, plugin in enumerate(extra_plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{number}"
            loader.add(plugin, PluginSource(name))
        return loader.registry()

    def inspect_checkpoint(
        self, path: Path, tokenizer: Path | None = None, *, load_tokenizer: bool = True
    ) -> CheckpointInfo | None:
        """Ask the format plugins to claim ``path`` (absolute); ``None`` when none does."""
        return self._manager.hook.gpt_simple_inspect_checkpoint(
            path=path, tokenizer=tokenizer, load_tokenizer=load_tokenizer
        )

    def install_hint(self, provider: Backend | Exporter) -> str:
        """What installs the missing dependencies of a backend or exporter: its own
        distribution with its ``extra`` (or the import names, for a plugin not installed as a
        distribution)."""
        source = self.sources.get(provider.name)
        distribution = source.distribution if source else None
        if distribution is None:
            return f"pip install {' '.join(provider.requires)}"
        return install_command(distribution, provider.extra)

    def plugin_names(self) -> list[str]:
        return [name for name, _ in self._manager.list_name_plugin()]


class _Loader:
    """Builds one :class:`Registry`; every failure becomes a ``plugin_errors`` entry."""

    def __init__(self, group: str, pins: set[str] | None) -> None:
        self.group = group
        self.pins = pins
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.errors: dict[str, str] = {}
        self.sources: dict[str, PluginSource] = {}  # plugin name -> source

    def load_entry_points(self) -> None:
        available = {ep.name: ep for ep in entry_points(group=self.group)}
        wanted = list(available) if self.pins is None else sorted(self.pins)
        queue = list(wanted)
        while queue:
            name = queue.pop(0)
            if self.manager.has_plugin(name) or name in self.errors:
                continue
            entry_point = available.get(name)
            if entry_point is None:
                self.errors[name] = f"named in {PINS_ENV_VAR} but not installed"
                continue
            plugin = self._import(entry_point)
            if plugin is not None and self.add(plugin, _source_of(entry_point)):
                queue.extend(getattr(plugin, REQUIRES_ATTRIBUTE, ()))

    def _import(self, entry_point: EntryPoint) -> Any:
        try:
            return entry_point.load()
        except Exception as exc:  # a broken plugin must not take the tool down
            self._fail(entry_point.name, f"{type(exc).__name__}: {exc}")
            return None

    def add(self, plugin: Any, source: PluginSource) -> bool:
        """Register ``plugin`` if it declares a plugin API this core provides."""
        declared = getattr(plugin, API_ATTRIBUTE, None)
        if declared != PLUGIN_API:
            why = (
                f"declares no {API_ATTRIBUTE}"
                if declared is None
                else f"is written for plugin API {declared!r}"
            )
            self._fail(
                source.name,
                f"{why}; this gpt-simple provides plugin API {PLUGIN_API} (upgrade the plugin "
                f"or gpt-simple so they match)",
            )
            return False
        try:
            self.manager.register(plugin, name=source.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self._fail(source.name, f"{type(exc).__name__}: {exc}")
            return False
        self.sources[source.name] = source
        return True

    def _fail(self, name: str, why: str) -> None:
        self.errors[name] = why
        log.warning("plugin not loaded", plugin=name, error=why)

    def registry(self) -> Registry:
        backends = self._collect("gpt_simple_register_backends", Backend)
        exporters = self._collect("gpt_simple_register_exporters", Exporter)
        formats = self._collect("gpt_simple_register_formats", Format)
        owners = {**backends[1], **exporters[1], **formats[1]}
        return Registry(
            backends=MappingProxyType(backends[0]),
            exporters=MappingProxyType(exporters[0]),
            formats=MappingProxyType(formats[0]),
            plugin_errors=MappingProxyType(dict(self.errors)),
            sources=MappingProxyType({thing: self.sources[p] for thing, p in owners.items()}),
            manager=self.manager,
        )

    def _collect(self, hook: str, kind: type) -> tuple[dict[str, Any], dict[str, str]]:
        """(name -> instance, name -> plugin) over every plugin's ``hook``, one plugin at a
        time so a plugin that registers something broken is reported and skipped alone."""
        found: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for plugin_name, plugin in list(self.manager.list_name_plugin()):
            caller = self.manager.subset_hook_caller(
                hook, remove_plugins=[p for p in self.manager.get_plugins() if p is not plugin]
            )
            registered: list[Any] = []
            try:
                caller(register=registered.append)
                for item in registered:
                    _check_registered(item, kind, found, owner)
            except Exception as exc:
                self._fail(plugin_name, f"{type(exc).__name__}: {exc}")
                continue
            for item in registered:
                found[item.name] = item
                owner[item.name] = plugin_name
        return found, owner


def _check_registered(item: Any, kind: type, found: Mapping[str, Any], owner: Mapping) -> None:
    if not isinstance(item, kind):
        raise TypeError(f"registered {item!r}, which is not a {kind.__name__}")
    if item.name in found:
        raise ValueError(
            f"registers a {kind.__name__.lower()} named {item.name!r}, which plugin "
            f"{owner[item.name]!r} registered first"
        )


def _source_of(entry_point: EntryPoint) -> PluginSource:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return PluginSource(entry_point.name)
    return PluginSource(entry_point.name, dist.metadata["Name"], dist.version)


_default: Registry | None = None


def default_registry() -> Registry:
    """The registry of the Python API, discovered on first use (``GPT_SIMPLE_PLUGINS`` as it
    was then). Code that wants other plugins builds its own and passes it explicitly."""
    global _default
    if _default is None:
        _default = Registry.discover()
    return _default
