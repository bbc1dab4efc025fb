"""Which backend runs a group: the one named, else the installed one with the highest priority
for the checkpoint's format whose pre-flight accepts the request."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.protocol import AUTO, Backend, LoadRequest

#: What to install when no backend runs a format the core itself knows.
INSTALL_HINTS = {"gpt-simple": "pip install 'gpt-simple-inference[torch]'"}


@attrs.frozen
class BackendChoice:
    backend: Backend | None
    because: str = ""
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _installed(backends: Mapping[str, Backend]) -> str:
    return ", ".join(sorted(backends)) or "none"


def choose_backend(
    info: CheckpointInfo,
    requested: str | None,
    request: LoadRequest,
    backends: Mapping[str, Backend],
    plugin_errors: Mapping[str, str] | None = None,
) -> BackendChoice:
    """Pick and pre-flight a backend for ``info``; problems say why and what would work."""
    if requested is not None:
        return _explicit(info, requested, request, backends, plugin_errors or {})
    candidates = sorted(
        (b for b in backends.values() if b.formats.get(info.format) == AUTO),
        key=lambda b: (-b.priority, b.name),
    )
    if not candidates:
        explicit = sorted(n for n, b in backends.items() if info.format in b.formats)
        message = f"no installed backend runs {info.format} checkpoints automatically"
        if explicit:
            message += f"; name one that can with --backend / model.backend: {', '.join(explicit)}"
        elif info.format in INSTALL_HINTS:
            message += f" ({INSTALL_HINTS[info.format]})"
        return BackendChoice(None, problems=(message,))
    refused: list[str] = []
    for backend in candidates:
        preflight = backend.preflight(info, request)
        if not preflight.problems:
            because = f"auto: highest-priority installed backend for {info.format} checkpoints"
            if refused:
                because += f" that accepts this request ({'; '.join(refused)})"
            return BackendChoice(backend, because, warnings=preflight.warnings)
        refused.extend(preflight.problems)
    return BackendChoice(None, problems=tuple(refused))


def _explicit(
    info: CheckpointInfo,
    name: str,
    request: LoadRequest,
    backends: Mapping[str, Backend],
    plugin_errors: Mapping[str, str],
) -> BackendChoice:
    backend = backends.get(name)
    if backend is None:
        if name in plugin_errors:
            message = f"backend {name!r} failed to load: {plugin_errors[name]}"
        else:
            message = f"unknown backend {name!r} (installed: {_installed(backends)})"
        return BackendChoice(None, problems=(message,))
    if info.format not in backend.formats:
        able = sorted(n for n, b in backends.items() if info.format in b.formats)
        message = f"backend {name!r} cannot run {info.format} checkpoints"
        message += f"; use {', '.join(able)}" if able else "; no installed backend can"
        return BackendChoice(None, problems=(message,))
    preflight = backend.preflight(info, request)
    return BackendChoice(backend, "requested", preflight.problems, preflight.warnings)
