"""The planner: records -> groups of one model load each, every problem found before loading.

Planning resolves every checkpoint, loads tokenizers (for EOS ids and a cheap context bound)
and pre-flights backends, but never loads weights or imports a runtime such as torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.checkpoints.resolve import resolve_checkpoint
from gpt_simple_core.errors import CheckpointError
from gpt_simple_core.plan.backend_choice import Asked, BackendChoice, choose_backend
from gpt_simple_core.plan.bounds import bounded_threads, fit_warnings
from gpt_simple_core.plan.model import Plan, PlanGroup, PlanProblem
from gpt_simple_core.plan.planned import Planned, PlannedGroup, PlannedRecord
from gpt_simple_core.protocol import AUTO, OVERFLOW_WINDOW, LoadRequest
from gpt_simple_core.records.parse import GENERATE, Record, bulk_allocation
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.schema import (
    BUILTIN_GENERATION,
    GenerationSpec,
    ModelSpec,
    resolve_generation,
    stack,
)
from gpt_simple_core.records.seeds import derive_seed, draw_run_seed
from gpt_simple_core.registry import Registry
from gpt_simple_core.settings import Settings
from gpt_simple_core.wording import plural


@attrs.frozen
class _GroupKey:
    checkpoint: Path
    dtype: str
    tokenizer: Path | None
    backend: str
    options: Any
    quantize: str | None


@attrs.frozen
class _Route:
    """Where a model block sends its records: a group, or problems (field, message)."""

    key: _GroupKey | None = None
    info: CheckpointInfo | None = None
    choice: BackendChoice | None = None
    problems: tuple[tuple[str, str], ...] = ()


class GenerationResolver:
    """Each record's sampling parameters: built-in defaults < the settings' generation block <
    the record's own, and its seed (its own, else derived from the run seed and its position).

    The one place defaults are stacked and seeds derived, for plans and for the Python API
    alike. Each distinct generation block is resolved once: a sweep shares them.
    """

    def __init__(self, settings: Settings) -> None:
        self.run_seed = settings.run_seed if settings.run_seed is not None else draw_run_seed()
        self._defaults = stack(BUILTIN_GENERATION, attrs.evolve(settings.generation, seed=None))
        # generation block -> (its resolved fields but the seed, the block's own seed)
        self._resolved: dict[GenerationSpec | None, tuple[dict[str, Any], int | None]] = {}

    def planned(self, record: Record) -> PlannedRecord:
        resolved = self._resolved.get(record.generation)
        if resolved is None:
            spec = stack(self._defaults, record.generation)
            fields = resolve_generation(spec, 0).to_fields()
            del fields["seed"]
            resolved = self._resolved[record.generation] = (fields, spec.seed)
        fields, seed = resolved
        if record.seed is not None:
            seed = record.seed
        elif seed is None:
            seed = derive_seed(self.run_seed, record.index)
        return PlannedRecord(record, fields, seed)


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
    """Builds a :class:`Planned` from parsed records, the stacked settings and a registry."""

    def __init__(
        self, settings: Settings, registry: Registry, *, source: str, cwd: Path | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.source = source
        self.cwd = cwd or Path.cwd()
        self.generation = GenerationResolver(settings)
        self._checkpoints: dict[tuple[str, str | None], CheckpointInfo | CheckpointError] = {}
        self._choices: dict[tuple, BackendChoice] = {}
        # Sweeps repeat the same blocks on every line: stack each distinct block once.
        self._model_specs: dict[ModelSpec | None, ModelSpec] = {}
        # model block -> where its records go (a group key) or the problems that stop them
        self._routes: dict[ModelSpec | None, _Route] = {}
        self.threads, threads_warning = bounded_threads(settings.run.threads)
        self.warnings: list[str] = [threads_warning] if threads_warning else []

    # Per record ----------------------------------------------------------------------------
    def model_spec(self, record: Record) -> ModelSpec:
        """The record's model block over the defaults; a record's own path brings no default
        tokenizer with it (the default tokenizer belongs to the default model)."""
        spec = self._model_specs.get(record.model)
        if spec is None:
            spec = self._model_specs[record.model] = self.stack_model(record.model)
        return spec

    def stack_model(self, own: ModelSpec | None) -> ModelSpec:
        default, own = self.settings.model, own or ModelSpec()
        spec = stack(default, attrs.evolve(own, checkpoint=None, output_dir=None))
        if own.options is not None:
            spec = attrs.evolve(spec, options=own.options.over(default.options))
        if own.path is not None:
            spec = attrs.evolve(spec, checkpoint=own.path, output_dir=None, tokenizer=own.tokenizer)
        elif default.path is not None:
            spec = attrs.evolve(spec, checkpoint=default.path, output_dir=None)
        return spec

    def checkpoint(self, path: str, tokenizer: str | None) -> CheckpointInfo | CheckpointError:
        key = (path, tokenizer)
        if key not in self._checkpoints:
            try:
                self._checkpoints[key] = resolve_checkpoint(
                    path, self.registry, tokenizer=tokenizer, cwd=self.cwd
                )
            except CheckpointError as exc:
                self._checkpoints[key] = exc
        return self._checkpoints[key]

    def asked(self, spec: ModelSpec) -> Asked:
        """What the settings and ``spec`` ask of whichever backend runs it."""
        run = self.settings.run
        request = LoadRequest(
            dtype=spec.dtype or AUTO,
            device=run.device or AUTO,
            threads=self.threads,
            context_overflow=run.context_overflow,
            quantize=spec.requested_quantization,
        )
        return Asked(request, spec.options, self.settings.backend_options)

    def choice(self, info: CheckpointInfo, spec: ModelSpec) -> BackendChoice:
        key = (info.path, info.format, spec.backend, spec.dtype, spec.options, spec.quantize)
        if key not in self._choices:
            self._choices[key] = choose_backend(info, spec.backend, self.asked(spec), self.registry)
        return self._choices[key]

    def route(self, spec: ModelSpec, *, from_record: bool = True) -> _Route:
        """Where records with model block ``spec`` (stacked) go; nothing else matters."""
        if spec.path is None:
            message = "no model: give model.checkpoint in the record, or --checkpoint"
            return _Route(problems=(("model", message),))
        field = "model.checkpoint" if from_record else "--checkpoint"
        info = self.checkpoint(spec.path, spec.tokenizer)
        if isinstance(info, CheckpointError):
            return _Route(problems=((field, str(info)),))
        choice = self.choice(info, spec)
        if choice.problems:
            return _Route(problems=tuple((p.field, p.message) for p in choice.problems))
        assert choice.backend is not None and choice.request is not None  # no problems
        request = choice.request
        key = _GroupKey(
            info.path,
            request.dtype,
            info.tokenizer,
            choice.backend.name,
            request.options,
            request.quantize,
        )
        return _Route(key=key, info=info, choice=choice)

    # The whole input -----------------------------------------------------------------------
    def plan(self, records: Sequence[Record], parse_problems: Sequence[Problem] = ()) -> Planned:
        log = _ProblemLog(self.source)
        for problem in parse_problems:
            log.add(problem)
        with bulk_allocation():
            planned_groups = self._place(records, log)
        warnings = list(self.warnings)
        if not records and not parse_problems:
            warnings.append(f"{self.source} contains no records: there is nothing to run")
        plan = Plan(
            input=self.source,
            records=len(records),
            groups=tuple(g.summary for g in planned_groups),
            problems=log.problems(),
            warnings=tuple(warnings),
        )
        return Planned(plan, planned_groups, self.generation.run_seed)

    def _place(self, records: Sequence[Record], log: _ProblemLog) -> list[PlannedGroup]:
        """Put every record in its group (or log why it cannot run); summarise the groups."""
        groups: dict[_GroupKey, PlannedGroup] = {}
        group_of: dict[int, PlannedGroup] = {}  # id(route) -> its group: no key hashing per record
        for record in records:
            route = self._routes.get(record.model)
            if route is None:
                own_path = record.model is not None and record.model.path is not None
                route = self._routes[record.model] = self.route(
                    self.model_spec(record), from_record=own_path
                )
            group = group_of.get(id(route))
            if group is None:
                if route.problems:
                    for field, message in route.problems:
                        log.add(Problem(record.line, field, message), merge=True)
                    continue
                assert route.key is not None and route.info and route.choice is not None
                group = groups.get(route.key)
                if group is None:
                    group = groups[route.key] = self.new_group(
                        route.info, route.choice, record.line
                    )
                group_of[id(route)] = group
            group.records.append(self.generation.planned(record))
        return [self._summarise(group) for group in groups.values()]

    def new_group(self, info: CheckpointInfo, choice: BackendChoice, line: int) -> PlannedGroup:
        assert choice.backend is not None and choice.request is not None
        request = choice.request
        summary = PlanGroup(
            checkpoint=str(info.path),
            format=info.format,
            step=info.step,
            selected_because=info.selected_because,
            backend=choice.backend.name,
            backend_selected_because=choice.because or None,
            dtype=request.dtype if request.dtype != AUTO else "auto (resolved at load)",
            quantize=request.quantize,
            device=request.device if not request.device.is_auto else "auto (resolved at load)",
            tokenizer=str(info.tokenizer) if info.tokenizer else None,
            eos_id=info.eos_id,
            first_line=line,
            context_length=info.context_length,
            options=_options_json(request.options),
            warnings=tuple(info.warnings) + tuple(choice.warnings),
            notes=choice.notes,
        )
        return PlannedGroup(info, choice.backend, request, [], summary)

    def _summarise(self, group: PlannedGroup) -> PlannedGroup:
        budget = sum(r.max_new_tokens for r in group.records)
        weight_bytes = group.backend.weight_bytes(group.info, group.request.dtype)
        warnings = list(group.summary.warnings) + _context_warnings(group) + fit_warnings(group)
        group.summary = attrs.evolve(
            group.summary,
            records=len(group.records),
            token_budget=budget,
            weight_bytes=weight_bytes,
            warnings=tuple(warnings),
        )
        return group


def _options_json(options: Any) -> dict[str, Any] | None:
    """A backend's options instance as the plan shows it (None without options)."""
    if options is None:
        return None
    return attrs.asdict(options) if attrs.has(type(options)) else {"value": repr(options)}


def _context_warnings(group: PlannedGroup) -> list[str]:
    """Records that will (or may) run past the context, from a cheap bound on prompt tokens.

    A byte-level token covers at least one byte and at most ``max_token_bytes`` bytes, so
    ``bytes / max_token_bytes <= tokens <= bytes``: no prompt is tokenized while planning. A
    backend that always reads a fixed window (HipGPT) has no context to run past.
    """
    context = group.info.context_length
    if not context or group.backend.context_overflow == (OVERFLOW_WINDOW,):
        return []
    if group.records and group.records[0].record.task != GENERATE:
        return []  # scoring windows long text itself (engine/scoring.py), and generates nothing
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
        parts.append(f"{plural(will, 'record')} will run past the context of {context} tokens")
    if may:
        parts.append(f"{may} more may (prompt + max_new_tokens, from a cheap bound)")
    return ["; ".join(parts) + "; the backend's context policy applies (see meta)"]
