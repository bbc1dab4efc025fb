"""The plan as users and machines see it (``--dry-run``, ``--plan-format json``).

Its JSON shape is a contract: extend it, never rename. :func:`plan_to_json` and
:func:`plan_from_json` round-trip.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs

from gpt_simple_core.wording import plural

PLAN_VERSION = 1


@attrs.frozen(kw_only=True)
class PlanGroup:
    """One model load: the records that share checkpoint, dtype, tokenizer and backend."""

    checkpoint: str
    format: str
    step: int | None = None
    selected_because: str | None = None
    backend: str | None = None
    backend_selected_because: str | None = None
    dtype: str = "auto"
    quantize: str | None = None
    device: str = "auto"
    tokenizer: str | None = None
    eos_id: int | None = None
    records: int = 0
    first_line: int | None = None
    token_budget: int = 0
    weight_bytes: int | None = None
    context_length: int | None = None
    options: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class PlanProblem:
    """A structural problem; ``count`` > 1 when the same problem repeats on many records."""

    file: str
    line: int | None
    field: str
    message: str
    count: int = 1

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        if self.count > 1:
            text += f" (and {plural(self.count - 1, 'more record')})"
        return text


@attrs.frozen(kw_only=True)
class Plan:
    version: int = PLAN_VERSION
    input: str | None = None
    records: int = 0
    groups: tuple[PlanGroup, ...] = ()
    problems: tuple[PlanProblem, ...] = ()
    warnings: tuple[str, ...] = ()
    #: the config files whose settings the plan used, in the order they were read (an
    #: unnoticed ``[tool.gpt-simple]`` table changes results: the plan says it is there)
    config_files: tuple[str, ...] = ()
    #: with ``--shard``: per shard, its groups (and parts of split groups), records, cost
    shards: tuple[dict[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


_converter = cattrs.Converter()


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return _converter.unstructure(plan)


def plan_from_json(data: dict[str, Any]) -> Plan:
    """The inverse of :func:`plan_to_json`."""
    return _converter.structure(data, Plan)
