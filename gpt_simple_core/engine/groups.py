"""Planned groups made ready to load: ``auto`` resolved, pre-flighted again, merged.

Before anything loads, each group's ``auto`` dtype and device are resolved by its backend (and
the resolved request pre-flighted again when it changed, so a backend only ever loads a request
that passed pre-flight) and groups that resolve alike are merged, so a checkpoint never loads
twice.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import structlog

from gpt_simple_core.plan.planned import PlannedGroup, PlannedRecord
from gpt_simple_core.plan.preflight import preflight
from gpt_simple_core.protocol import LoadRequest
from gpt_simple_core.registry import Registry

log = structlog.get_logger(__name__)


@attrs.define
class GroupRun:
    """A group with its resolved load request (``problem``: why it cannot load)."""

    group: PlannedGroup
    request: LoadRequest
    records: list[PlannedRecord]
    problem: str | None = None


def resolve_groups(groups: Iterable[PlannedGroup], registry: Registry) -> list[GroupRun]:
    """Resolve ``auto`` per group, pre-flight what resolving changed, and merge groups that
    resolve to the same load."""
    runs: dict[tuple, GroupRun] = {}
    for group in groups:
        backend = group.backend
        problem = None
        try:
            request = backend.resolve(group.request)
        except Exception as exc:  # the load will fail the same way and report it per record
            log.warning("could not resolve dtype/device", backend=backend.name, error=str(exc))
            request = group.request
        if request != group.request:
            found = preflight(backend, group.info, request, registry)
            if found.problems:
                problem = "; ".join(map(str, found.problems))
        key = (group.info.path, group.info.tokenizer, backend.name, request, problem)
        if key in runs:
            runs[key].records.extend(group.records)
            log.info("merged groups that resolve alike", checkpoint=str(group.info.path))
        else:
            runs[key] = GroupRun(group, request, list(group.records), problem)
    for run in runs.values():
        run.records.sort(key=lambda r: r.record.index)
    return list(runs.values())
