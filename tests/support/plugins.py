"""Which plugins a test runs with: the registry the Python API and the CLI helpers use.

Tests add plugin objects (the toy backend, test backends) with :func:`add_plugin`; the registry
is rebuilt from the entry points the environment pins (``GPT_SIMPLE_PLUGINS``) plus those
objects, and installed as the API's default (:func:`gpt_simple_core.registry.default_registry`),
which :func:`tests.support.cli.cli` also hands to the CLI. :func:`reset` starts over.
"""

from __future__ import annotations

from typing import Any

from gpt_simple_core import registry as registry_module
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.checkpoints.resolve import resolve_checkpoint as _resolve
from gpt_simple_core.registry import Registry

_added: list[Any] = []


def rebuild() -> Registry:
    """Discover again (the environment as it is now) with the plugins added so far."""
    registry_module._default = Registry.discover(extra_plugins=list(_added))
    return registry_module._default


def add_plugin(plugin: Any) -> Registry:
    if not any(existing is plugin for existing in _added):
        _added.append(plugin)
    return rebuild()


def reset() -> None:
    """Forget added plugins and the cached default registry (rebuilt on next use)."""
    _added.clear()
    registry_module._default = None


def current() -> Registry:
    return registry_module.default_registry()


def resolve_checkpoint(raw: str, **options: Any) -> CheckpointInfo:
    """:func:`gpt_simple_core.checkpoints.resolve.resolve_checkpoint` with the test's plugins."""
    return _resolve(raw, current(), **options)


def preflight_of(backend: Any, info: CheckpointInfo, request: Any) -> Any:
    """What pre-flight says of ``request`` for ``backend``: the core's checks of what it
    declares, then its own (:func:`gpt_simple_core.plan.preflight.preflight`)."""
    from gpt_simple_core.plan.preflight import preflight

    return preflight(backend, info, request, current())
