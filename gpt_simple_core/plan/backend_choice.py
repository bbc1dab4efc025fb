"""Which backend runs a group: the one named, else the installed one with the highest priority
for the checkpoint's format whose pre-flight accepts the request.

Every candidate is pre-flighted with the request as it would reach it: its own options (the
config's ``[backend.NAME]`` table under the record's ``model.options``) validated against its
schema. Nothing is special about any format: what to install for one no backend runs comes
from the format plugin that registered it.
"""

from __future__ import annotations

import attrs

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.plan.preflight import OPTIONS_FIELD, preflight, structure_options
from gpt_simple_core.protocol import AUTO, Backend, LoadRequest, PreflightProblem
from gpt_simple_core.records.schema import Options
from gpt_simple_core.registry import Registry


@attrs.frozen
class BackendChoice:
    """The backend chosen (or ``None``), why, and the request it runs (options structured)."""

    backend: Backend | None
    request: LoadRequest | None = None
    because: str = ""
    problems: tuple[PreflightProblem, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@attrs.frozen
class Asked:
    """What the layers ask of the backend, before any backend is known."""

    request: LoadRequest  # options not yet structured
    options: Options | None = None  # the record's own (``model.options``), over the config's
    backend_tables: dict[str, Options] = attrs.field(factory=dict)  # ``[backend.NAME]``

    def for_backend(self, backend: Backend) -> tuple[LoadRequest | None, list[PreflightProblem]]:
        """The request as ``backend`` would get it, or the problems of its options."""
        table = self.backend_tables.get(backend.name)
        merged = self.options.over(table) if self.options is not None else table
        instance, problems = structure_options(backend, merged)
        if problems:
            return None, [PreflightProblem(p.message, p.field or OPTIONS_FIELD) for p in problems]
        return attrs.evolve(self.request, options=instance), []


def _installed(registry: Registry) -> str:
    return ", ".join(sorted(registry.backends)) or "none"


def _try(backend: Backend, info: CheckpointInfo, asked: Asked, registry: Registry) -> BackendChoice:
    request, problems = asked.for_backend(backend)
    if request is None:
        return BackendChoice(backend, problems=tuple(problems))
    found = preflight(backend, info, request, registry)
    return BackendChoice(backend, request, "", found.problems, found.warnings, found.notes)


def choose_backend(
    info: CheckpointInfo, requested: str | None, asked: Asked, registry: Registry
) -> BackendChoice:
    """Pick and pre-flight a backend for ``info``; problems say why and what would work."""
    if requested is not None:
        return _explicit(info, requested, asked, registry)
    backends = registry.backends
    candidates = sorted(
        (b for b in backends.values() if b.formats.get(info.format) == AUTO),
        key=lambda b: (-b.priority, b.name),
    )
    if not candidates:
        explicit = sorted(n for n, b in backends.items() if info.format in b.formats)
        message = f"no installed backend runs {info.format} checkpoints automatically"
        known = registry.formats.get(info.format)
        if explicit:
            message += f"; name one that can with --backend / model.backend: {', '.join(explicit)}"
        elif known is not None and known.install_hint:
            message += f" ({known.install_hint})"
        return BackendChoice(None, problems=(PreflightProblem(message),))
    refused: list[PreflightProblem] = []
    for backend in candidates:
        tried = _try(backend, info, asked, registry)
        if not tried.problems:
            because = f"auto: highest-priority installed backend for {info.format} checkpoints"
            if refused:
                because += f" that accepts this request ({'; '.join(map(str, refused))})"
            return attrs.evolve(tried, because=because)
        refused.extend(tried.problems)
    return BackendChoice(None, problems=tuple(refused))


def _explicit(info: CheckpointInfo, name: str, asked: Asked, registry: Registry) -> BackendChoice:
    backend = registry.backends.get(name)
    if backend is None:
        if name in registry.plugin_errors:
            message = f"backend {name!r} failed to load: {registry.plugin_errors[name]}"
        else:
            message = f"unknown backend {name!r} (installed: {_installed(registry)})"
        return BackendChoice(None, problems=(PreflightProblem(message),))
    if info.format not in backend.formats:
        able = sorted(n for n, b in registry.backends.items() if info.format in b.formats)
        message = f"backend {name!r} cannot run {info.format} checkpoints"
        message += f"; use {', '.join(able)}" if able else "; no installed backend can"
        return BackendChoice(None, problems=(PreflightProblem(message),))
    return attrs.evolve(_try(backend, info, asked, registry), because="requested")
