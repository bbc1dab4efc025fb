"""Pre-flight: the checks every request passes before a backend loads it.

The core checks what backends declare (dependencies, dtypes, device kinds, context-overflow
policies, options), then asks the backend for what only it knows (:meth:`Backend.preflight`).
Nothing here imports a runtime: a dry-run runs all of it.
"""

from __future__ import annotations

from typing import Any

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.protocol import (
    AUTO,
    OVERFLOW_WINDOW,
    Backend,
    LoadRequest,
    Preflight,
    PreflightProblem,
)
from gpt_simple_core.records.converter import structure_block
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.schema import Options
from gpt_simple_core.registry import Registry

OPTIONS_FIELD = "model.options"


def _list(names: tuple[str, ...]) -> str:
    return ", ".join(names) if names else "nothing"


def _refusal(backend: Backend, what: str, value: str) -> str:
    """The backend's explanation for refusing ``value`` of ``what`` (``": ..."``), if any."""
    why = backend.refusals.get(f"{what}:{value}") or backend.refusals.get(what)
    return f": {why}" if why else ""


def _dependencies(backend: Backend, registry: Registry) -> list[PreflightProblem]:
    missing = backend.missing_dependencies()
    if not missing:
        return []
    names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    verb = "is" if len(missing) == 1 else "are"
    return [
        PreflightProblem(
            f"backend {backend.name!r} needs {names}, which {verb} not installed "
            f"({registry.install_hint(backend)})"
        )
    ]


def declared_checks(
    backend: Backend, request: LoadRequest, registry: Registry
) -> tuple[list[PreflightProblem], list[str]]:
    """(problems, warnings) of ``request`` against what ``backend`` declares it runs."""
    problems = _dependencies(backend, registry)
    warnings: list[str] = []
    if request.dtype != AUTO and request.dtype not in backend.dtypes:
        problems.append(
            PreflightProblem(
                f"backend {backend.name!r} cannot run dtype {request.dtype} (it runs "
                f"{_list(backend.dtypes)}){_refusal(backend, 'dtype', request.dtype)}",
                "model.dtype",
            )
        )
    quantize = request.quantize
    if quantize is not None and quantize not in backend.quantizations:
        able = sorted(n for n, b in registry.backends.items() if quantize in b.quantizations)
        hint = f"; {' and '.join(able)} can (model.backend / --backend)" if able else ""
        declared = backend.quantizations
        runs = f"quantizes to {_list(declared)}" if declared else "runs unquantized weights only"
        problems.append(
            PreflightProblem(
                f"backend {backend.name!r} cannot quantize weights to {quantize} (it {runs})"
                f"{_refusal(backend, 'quantize', quantize)}{hint}",
                "model.quantize",
            )
        )
    device = request.device
    if not device.is_auto and device.kind not in backend.devices:
        problems.append(
            PreflightProblem(
                f"backend {backend.name!r} cannot run on {device} (it runs on "
                f"{_list(backend.devices)}){_refusal(backend, 'device', device.kind)}",
                "--device",
            )
        )
    policy = request.context_overflow
    if policy is not None and policy not in backend.context_overflow:
        if backend.context_overflow == (OVERFLOW_WINDOW,):
            warnings.append(
                f"context_overflow={policy} is ignored: backend {backend.name!r} always reads "
                f"a fixed window of the last tokens"
            )
        else:
            problems.append(
                PreflightProblem(
                    f"backend {backend.name!r} cannot do context_overflow {policy} (it does "
                    f"{_list(backend.context_overflow)})"
                    f"{_refusal(backend, 'context_overflow', policy)}",
                    "--context-overflow",
                )
            )
    return problems, warnings


def preflight(
    backend: Backend, checkpoint: CheckpointInfo, request: LoadRequest, registry: Registry
) -> Preflight:
    """The core's checks, then the backend's own: only for a request the declarations accept
    (the backend may need its dependencies to say more, and its checks may cost something,
    such as hashing weights)."""
    problems, warnings = declared_checks(backend, request, registry)
    own = Preflight() if problems else backend.preflight(checkpoint, request)
    return Preflight(problems, warnings) + own


def structure_options(
    backend: Backend, raw: Options | None, line: int | None = None
) -> tuple[Any, list[Problem]]:
    """``raw`` (config table and ``model.options`` merged) as an instance of the backend's
    ``Options``; every unknown key and bad value is a problem of ``model.options.KEY``."""
    schema = backend.Options
    if schema is None:
        if raw is not None and raw.values:
            keys = ", ".join(sorted(raw.values))
            message = f"backend {backend.name!r} takes no options (got {keys})"
            return None, [Problem(line, OPTIONS_FIELD, message)]
        return None, []
    instance, problems = structure_block(raw.values if raw else {}, schema, OPTIONS_FIELD, line)
    return instance, problems
