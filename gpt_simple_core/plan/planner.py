"""The planner: records -> groups of one model load each, every problem found before loading.

Planning resolves every checkpoint, loads tokenizers (for EOS ids and a cheap context bound)
and pre-flights backends, but never loads weights or imports a runtime such as torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.checkpoints.resolve import resolve_checkpoint
from gpt_simple_core.errors import CheckpointError
from gpt_simple_core.plan.backend_choice import BackendChoice, choose_backend
from gpt_simple_core.plan.model import Plan, PlanGroup, PlanProblem
from gpt_simple_core.protocol import Backend, LoadRequest
from gpt_simple_core.records.parse import Record, bulk_allocation
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.schema import (
    BUILTIN_GENERATION,
    DTYPE_BYTES,
    GenerationParams,
    GenerationSpec,
    ModelSpec,
    resolve_generation,
    stack,
)
from gpt_simple_core.records.seeds import derive_seed, draw_run_seed
from gpt_simple_core.settings import Settings


@attrs.define(eq=False)
class PlannedRecord:
    """A record and its resolved sampling parameters.

    The planner gives each record the fields its generation block resolves to (shared by the
    records with that block) and its seed; ``params`` is built from them on first use, so
    planning (a dry-run of 100k records) does not build an object per record.
    """

    record: Record
    _params: GenerationParams | None = None
    _fields: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    _seed: int | None = None

    @property
    def params(self) -> GenerationParams:
        if self._params is None:
            assert self._fields is not None and self._seed is not None
            self._params = GenerationParams(**self._fields, seed=self._seed)
        return self._params

    @property
    def max_new_tokens(self) -> int:
        return self._params.max_new_tokens if self._params else self._fields["max_new_tokens"]


@attrs.define
class PlannedGroup:
    """A group ready to run: its checkpoint, backend, load request and records."""

    info: CheckpointInfo
    backend: Backend | None
    request: LoadRequest
    records: list[PlannedRecord]
    summary: PlanGroup


@attrs.define
class Planned:
    plan: Plan
    groups: list[PlannedGroup]


@attrs.frozen
class _GroupKey:
    checkpoint: Path
    dtype: str
    tokenizer: Path | None
    backend: str | None


@attrs.frozen
class _Route:
    """Where a model block sends its records: a group, or problems (field, message)."""

    key: _GroupKey | None = None
    info: CheckpointInfo | None = None
    choice: BackendChoice | None = None
    problems: tuple[tuple[str, str], ...] = ()


class _ProblemLog:
    """Collects problems; the same resolution problem on many records is reported once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._entries: dict[tuple[str, str], list] = {}
        self._order: list[tuple[str, str] | int] = []
        self._unique: list[PlanProblem] = []

    def add(self, problem: Problem, *, merge: bool = False) -> None:
        if not merge:
            self._unique.append(self._entry(problem))
            self._order.append(len(self._unique) - 1)
            return
        key = (problem.field, problem.message)
        if key not in self._entries:
            self._entries[key] = [problem.line, 0]
            self._order.append(key)
        self._entries[key][1] += 1

    def _entry(self, problem: Problem, count: int = 1) -> PlanProblem:
        return PlanProblem(
            file=self.source,
            line=problem.line,
            field=problem.field,
            message=problem.message,
            count=count,
        )

    def problems(self) -> tuple[PlanProblem, ...]:
        out = []
        for item in self._order:
            if isinstance(item, int):
                out.append(self._unique[item])
            else:
                line, count = self._entries[item]
                out.append(self._entry(Problem(line, *item), count))
        return tuple(sorted(out, key=lambda p: (p.line is None, p.line or 0)))


class Planner:
    """Builds a :class:`Planned` from parsed records and the stacked settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: str,
        cwd: Path | None = None,
        backends: Mapping[str, Backend] | None = None,
        plugin_errors: Mapping[str, str] | None = None,
    ) -> None:
        from gpt_simple_core import plugin_manager

        self.settings = settings
        self.source = source
        self.cwd = cwd or Path.cwd()
        self.backends = plugin_manager.get_backends() if backends is None else backends
        self.plugin_errors = (
            plugin_manager.plugin_errors if plugin_errors is None else plugin_errors
        )
        self.run_seed = settings.run_seed if settings.run_seed is not None else draw_run_seed()
        self._defaults = stack(BUILTIN_GENERATION, attrs.evolve(settings.generation, seed=None))
        self._checkpoints: dict[tuple[str, str | None], CheckpointInfo | CheckpointError] = {}
        self._choices: dict[tuple, BackendChoice] = {}
        # Sweeps repeat the same blocks on every line: stack each distinct block once.
        self._model_specs: dict[ModelSpec | None, ModelSpec] = {}
        # generation block -> (its resolved fields but the seed, the block's own seed)
        self._generation_specs: dict[GenerationSpec | None, tuple[dict[str, Any], int | None]] = {}
        # model block -> where its records go (a group key) or the problems that stop them
        self._routes: dict[ModelSpec | None, _Route] = {}

    # Per record ----------------------------------------------------------------------------
    def model_spec(self, record: Record) -> ModelSpec:
        """The record's model block over the defaults; a record's own path brings no default
        tokenizer with it (the default tokenizer belongs to the default model)."""
        spec = self._model_specs.get(record.model)
        if spec is None:
            spec = self._model_specs[record.model] = self._stack_model(record.model)
        return spec

    def _stack_model(self, own: ModelSpec | None) -> ModelSpec:
        default, own = self.settings.model, own or ModelSpec()
        spec = stack(default, attrs.evolve(own, checkpoint=None, output_dir=None))
        if own.path is not None:
            spec = attrs.evolve(spec, checkpoint=own.path, output_dir=None, tokenizer=own.tokenizer)
        elif default.path is not None:
            spec = attrs.evolve(spec, checkpoint=default.path, output_dir=None)
        return spec

    def planned(self, record: Record) -> PlannedRecord:
        """``record`` with its parameters: its generation block over the defaults (resolved
        once per distinct block: a sweep shares them) and its seed."""
        resolved = self._generation_specs.get(record.generation)
        if resolved is None:
            spec = stack(self._defaults, record.generation)
            fields = resolve_generation(spec, 0).to_fields()
            del fields["seed"]
            resolved = self._generation_specs[record.generation] = (fields, spec.seed)
        fields, seed = resolved
        if record.seed is not None:
            seed = record.seed
        elif seed is None:
            seed = derive_seed(self.run_seed, record.index)
        return PlannedRecord(record, fields=fields, seed=seed)

    def checkpoint(self, path: str, tokenizer: str | None) -> CheckpointInfo | CheckpointError:
        key = (path, tokenizer)
        if key not in self._checkpoints:
            try:
                self._checkpoints[key] = resolve_checkpoint(path, tokenizer=tokenizer, cwd=self.cwd)
            except CheckpointError as exc:
                self._checkpoints[key] = exc
        return self._checkpoints[key]

    def request(self, dtype: str) -> LoadRequest:
        run = self.settings.run
        options = {"context_overflow": run.context_overflow} if run.context_overflow else {}
        return LoadRequest(
            dtype=dtype, device=run.device or "auto", threads=run.threads, options=options
        )

    def choice(self, info: CheckpointInfo, backend: str | None, dtype: str) -> BackendChoice:
        key = (info.path, info.format, backend, dtype)
        if key not in self._choices:
            self._choices[key] = choose_backend(
                info, backend, self.request(dtype), self.backends, self.plugin_errors
            )
        return self._choices[key]

    # The whole input -----------------------------------------------------------------------
    def plan(self, records: Sequence[Record], parse_problems: Sequence[Problem] = ()) -> Planned:
        log = _ProblemLog(self.source)
        for problem in parse_problems:
            log.add(problem)
        with bulk_allocation():
            planned_groups = self._place(records, log)
        plan = Plan(
            input=self.source,
            records=len(records),
            groups=tuple(g.summary for g in planned_groups),
            problems=log.problems(),
        )
        return Planned(plan, planned_groups)

    def _place(self, records: Sequence[Record], log: _ProblemLog) -> list[PlannedGroup]:
        """Put every record in its group (or log why it cannot run); summarise the groups."""
        groups: dict[_GroupKey, PlannedGroup] = {}
        group_of: dict[int, PlannedGroup] = {}  # id(route) -> its group: no key hashing per record
        for record in records:
            route = self._routes.get(record.model)
            if route is None:
                route = self._routes[record.model] = self._route(record)
            group = group_of.get(id(route))
            if group is None:
                if route.problems:
                    for field, message in route.problems:
                        log.add(Problem(record.line, field, message), merge=True)
                    continue
                assert route.key is not None and route.info and route.choice is not None
                group = groups.get(route.key)
                if group is None:
                    group = groups[route.key] = self._new_group(
                        route.info, route.choice, route.key.dtype, record.line
                    )
                group_of[id(route)] = group
            group.records.append(self.planned(record))
        return [self._summarise(group) for group in groups.values()]

    def _route(self, record: Record) -> _Route:
        """Where records with this record's model block go; it depends on nothing else."""
        spec = self.model_spec(record)
        if spec.path is None:
            message = "no model: give model.checkpoint in the record, or --checkpoint"
            return _Route(problems=(("model", message),))
        field = "model.checkpoint" if record.model and record.model.path else "--checkpoint"
        info = self.checkpoint(spec.path, spec.tokenizer)
        if isinstance(info, CheckpointError):
            return _Route(problems=((field, str(info)),))
        dtype = spec.dtype or "auto"
        choice = self.choice(info, spec.backend, dtype)
        if choice.problems:
            return _Route(problems=tuple(("model.backend", m) for m in choice.problems))
        backend_name = choice.backend.name if choice.backend else None
        key = _GroupKey(info.path, dtype, info.tokenizer, backend_name)
        return _Route(key=key, info=info, choice=choice)

    def _new_group(
        self, info: CheckpointInfo, choice: BackendChoice, dtype: str, line: int
    ) -> PlannedGroup:
        request = self.request(dtype)
        summary = PlanGroup(
            checkpoint=str(info.path),
            format=info.format,
            step=info.step,
            selected_because=info.selected_because,
            backend=choice.backend.name if choice.backend else None,
            backend_selected_because=choice.because or None,
            dtype=dtype if dtype != "auto" else "auto (resolved at load)",
            device=request.device if request.device != "auto" else "auto (resolved at load)",
            tokenizer=str(info.tokenizer) if info.tokenizer else None,
            eos_id=info.eos_id,
            first_line=line,
            context_length=info.context_length,
            warnings=tuple(info.warnings) + tuple(choice.warnings),
        )
        return PlannedGroup(info, choice.backend, request, [], summary)

    def _summarise(self, group: PlannedGroup) -> PlannedGroup:
        info = group.info
        budget = sum(r.max_new_tokens for r in group.records)
        dtype_bytes = DTYPE_BYTES.get(group.request.dtype, 4)
        weight_bytes = info.param_count * dtype_bytes if info.param_count else None
        warnings = list(group.summary.warnings) + _context_warnings(group)
        group.summary = attrs.evolve(
            group.summary,
            records=len(group.records),
            token_budget=budget,
            weight_bytes=weight_bytes,
            warnings=tuple(warnings),
        )
        return group


def _context_warnings(group: PlannedGroup) -> list[str]:
    """Records that will (or may) run past the context, from a cheap bound on prompt tokens.

    A byte-level token covers at least one byte and at most ``max_token_bytes`` bytes, so
    ``bytes / max_token_bytes <= tokens <= bytes``: no prompt is tokenized while planning.
    """
    context = group.info.context_length
    if not context:
        return []
    longest = group.info.details.get("max_token_bytes") or 1
    will = may = 0
    for planned in group.records:
        new = planned.max_new_tokens
        prompt = planned.record.prompt
        if 4 * len(prompt) + new <= context:  # UTF-8 has at most 4 bytes a character
            continue
        n_bytes = len(prompt.encode("utf-8"))
        if math.ceil(n_bytes / longest) + new > context:
            will += 1
        elif n_bytes + new > context:
            may += 1
    if not (will or may):
        return []
    parts = []
    if will:
        parts.append(f"{will} record(s) will run past the context of {context} tokens")
    if may:
        parts.append(f"{may} more may (prompt + max_new_tokens, from a cheap bound)")
    return ["; ".join(parts) + "; the backend's context policy applies (see meta)"]
