"""What the planner hands the engine: records with their resolved sampling parameters, groups
of one model load each, and the plan that describes them (kept apart from the planner so that
the plan's bounds and the engine can name these types without importing the planner)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.plan.model import Plan, PlanGroup
from gpt_simple_core.protocol import Backend, LoadRequest
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.schema import GenerationParams


@attrs.define(eq=False, slots=False)
class PlannedRecord:
    """A record and its resolved sampling parameters: ``fields`` (everything but the seed, one
    mapping shared by the records whose generation blocks resolve alike) and its ``seed``.

    :attr:`params` is built from them on first use, so planning (a dry-run of 100k records)
    does not build an object per record.
    """

    record: Record
    fields: Mapping[str, Any] = attrs.field(repr=False)
    seed: int
    #: A lower bound of the prompt's tokens, from a cheap bound on its length (1 unless the
    #: plan found more): the engine refuses a row that cannot fit before tokenizing a huge
    #: prompt. Set on the instance only where it says something (a class default otherwise).
    min_prompt_tokens = 1
    #: On a sample of a record with ``generation.n`` > 1 (engine/samples.py): which sample it
    #: is, and the record the output is written for (class defaults otherwise).
    sample = 0
    of = None

    @classmethod
    def from_params(cls, record: Record, params: GenerationParams) -> PlannedRecord:
        fields = params.to_fields()
        seed = fields.pop("seed")
        planned = cls(record, fields, seed)
        planned.__dict__["params"] = params  # the cached_property's slot, already filled
        return planned

    @functools.cached_property
    def params(self) -> GenerationParams:
        return GenerationParams(**self.fields, seed=self.seed)

    @property
    def max_new_tokens(self) -> int:
        return self.fields["max_new_tokens"]


@attrs.define
class PlannedGroup:
    """A group ready to run: its checkpoint, backend, pre-flighted load request and records."""

    info: CheckpointInfo
    backend: Backend
    request: LoadRequest
    records: list[PlannedRecord]
    summary: PlanGroup


@attrs.define
class Planned:
    """The plan (what a dry-run shows), its groups, and the run seed every unseeded record's
    seed was derived from."""

    plan: Plan
    groups: list[PlannedGroup]
    run_seed: int = 0
