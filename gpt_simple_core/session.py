"""The one way into the engine: a :class:`Session` plans records and runs plans into sinks.

The CLI, the Python API (``generate``, ``generate_records``, ``load_for_inference``) and every
executor go through a session, so defaults, seeds, backend choice, pre-flight and the decode
loop exist once::

    session = Session(settings, Registry.discover())
    planned = session.plan(records, problems, source="sweep.jsonl")   # what --dry-run prints
    result = session.run(planned, sink)                                # -> RunResult

A session never decides exit statuses or prints: the CLI does both from the plan and the
:class:`~gpt_simple_core.engine.run.RunResult`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from gpt_simple_core import logs
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.engine.executor import Executor, LocalExecutor
from gpt_simple_core.engine.groups import GroupRun, resolve_groups
from gpt_simple_core.engine.result import RunResult
from gpt_simple_core.engine.stop import Stop
from gpt_simple_core.errors import BackendError, CheckpointError, ConfigError
from gpt_simple_core.output.progress import Progress
from gpt_simple_core.output.sinks import Sink
from gpt_simple_core.plan.planned import Planned
from gpt_simple_core.plan.planner import Planner
from gpt_simple_core.plan.preflight import structure_options
from gpt_simple_core.protocol import LoadedModel
from gpt_simple_core.records.converter import did_you_mean
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.schema import ModelSpec
from gpt_simple_core.registry import Registry
from gpt_simple_core.settings import Settings

if TYPE_CHECKING:  # numpy: the engine's decoding modules are imported when something runs
    from gpt_simple_core.engine.token_sequence import TokenSequence, TokenSink

log = structlog.get_logger(__name__)


class Session:
    """Settings (config file < command line, or the API's arguments) and a plugin registry,
    and everything that runs with them.

    ``progress`` shows progress on stderr while running (the CLI's default; the API is
    quiet). ``cwd`` is where relative checkpoint paths are resolved (default: the working
    directory).

    Streaming: a sink with an ``on_token(seq, piece)`` method (a
    :class:`~gpt_simple_core.engine.token_sequence.TokenSink`) gets every token's text as it
    is decoded, through the same decode loop; :meth:`stream_to` adds such a listener to every
    run of this session whatever its sink (``generate --stream --output FILE``: the JSONL goes
    to the file, the text to the terminal).
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        cwd: Path | None = None,
        progress: bool = True,
    ) -> None:
        logs.ensure_configured(level="warning")  # a library's default: warnings, on stderr
        self.settings = settings
        self.registry = registry
        self.cwd = cwd or Path.cwd()
        self.progress = progress
        self.listener: TokenSink | None = None
        self._check_backend_tables()

    def stream_to(self, listener: TokenSink) -> None:
        """Stream the runs of this session to ``listener`` too: its ``on_token`` gets each
        token's text, its ``put`` each finished record (after the run's own sink). The
        progress line is turned off: on a terminal it would overwrite the streamed text."""
        self.listener = listener
        self.progress = False

    def _check_backend_tables(self) -> None:
        """``[backend.NAME]`` tables against each backend's options schema, once."""
        lines = []
        for name, options in self.settings.backend_options.items():
            backend = self.registry.backends.get(name)
            if backend is None:
                hint = did_you_mean(name, set(self.registry.backends))
                log.warning(f"config has [backend.{name}] but no such backend is installed{hint}")
                continue
            _, found = structure_options(backend, options)
            for problem in found:
                field = problem.field.replace("model.options", f"backend.{name}", 1)
                lines.append(
                    Problem(None, field, problem.message).render(options.source or "config")
                )
        if lines:
            raise ConfigError("\n".join(lines))

    def with_run_seed(self, seed: int) -> Session:
        """This session with ``seed`` as the run seed (the same registry and options)."""
        generation = attrs.evolve(self.settings.generation, seed=seed)
        settings = attrs.evolve(self.settings, generation=generation)
        return Session(settings, self.registry, cwd=self.cwd, progress=self.progress)

    # Planning ------------------------------------------------------------------------------
    def planner(self, source: str) -> Planner:
        return Planner(self.settings, self.registry, source=source, cwd=self.cwd)

    def plan(
        self, records: Sequence[Record], problems: Sequence[Problem] = (), *, source: str
    ) -> Planned:
        """Group ``records`` by model load and check everything without loading anything:
        the plan lists every problem (``planned.plan.ok`` is false if there is one), and the
        config files the settings came from."""
        planned = self.planner(source).plan(records, problems)
        if self.settings.config_files:
            planned.plan = attrs.evolve(planned.plan, config_files=self.settings.config_files)
        return planned

    # Running -------------------------------------------------------------------------------
    def run(
        self,
        planned: Planned,
        sink: Sink,
        *,
        stop: Stop | None = None,
        skip: Collection[int] = (),
        executor: Executor | None = None,
    ) -> RunResult:
        """Run a plan without problems; every finished record goes to ``sink``. Records whose
        input position is in ``skip`` are left out (a resumed run has them already), and a
        group left with none is not loaded. ``executor`` runs the groups (default: this
        process, :class:`~gpt_simple_core.engine.executor.LocalExecutor`)."""
        if not planned.plan.ok:
            raise ConfigError(f"the plan of {planned.plan.input} has problems; nothing was run")
        for warning in planned.plan.warnings:
            log.warning(warning)
        groups = planned.groups
        if skip:
            groups = [
                attrs.evolve(g, records=[r for r in g.records if r.record.index not in skip])
                for g in groups
            ]
            groups = [g for g in groups if g.records]
        total = sum(len(g.records) for g in groups)
        runs = resolve_groups(groups, self.registry)
        if self.listener is not None:
            sink = _Streamed(sink, self.listener)
        result = (executor or LocalExecutor()).run(
            runs, sink, self.settings.run, progress=self._progress(total), stop=stop
        )
        counts = {"records": result.written, "failed": result.failed, "tokens": result.tokens}
        if result.stopped is None:
            log.info("done", **counts)
        else:
            log.warning(f"stopped ({result.stopped}): finished records are kept", **counts)
        return result

    def generate(
        self,
        model: LoadedModel,
        records: Sequence[Record],
        sink: Sink,
        *,
        meta: dict[str, Any],
        stop: Stop | None = None,
    ) -> RunResult:
        """Generate ``records`` with a model already loaded (the API's ``generate`` and
        ``stream``): the same parameters, seeds and decode loop as a planned run; ``meta`` is
        what every output record's ``meta`` starts with. A ``stop`` that is asked to stop
        raises :class:`~gpt_simple_core.engine.stop.StopRequested` between two decode steps
        (a stream that is closed early)."""
        from gpt_simple_core.engine.run import Engine

        resolver = self.planner("<api>").generation
        planned = [resolver.planned(record) for record in records]
        if self.listener is not None:
            sink = _Streamed(sink, self.listener)
        progress = self._progress(len(planned))
        engine = Engine(sink, self.settings.run, progress=progress, stop=stop)
        engine.decode(model, planned, meta)
        return RunResult(len(planned), engine.written, engine.failed, engine.progress.tokens)

    def _progress(self, total: int) -> Progress:
        return Progress(total, enabled=self.progress)

    # Loading one model ---------------------------------------------------------------------
    def load(self, spec: ModelSpec) -> tuple[LoadedModel, CheckpointInfo]:
        """Load the model ``spec`` names (over the settings' model block), through the same
        resolution, backend choice and pre-flight as a planned group."""
        planner = self.planner("<api>")
        route = planner.route(planner.stack_model(spec))
        if route.problems:
            raise _load_error(route.problems)
        assert route.info is not None and route.choice is not None
        group = planner.new_group(route.info, route.choice, line=1)
        (run,) = resolve_groups([group], self.registry)
        return _load(run), route.info

    def adopt(self, model: Any, tokenizer: Any) -> LoadedModel:
        """``model`` as the engine drives it: a :class:`LoadedModel` as it is, or what a
        backend's ``public_model()`` returned (e.g. the torch ``nn.Module``)."""
        if isinstance(model, LoadedModel):
            return model
        for backend in self.registry.backends.values():
            adopted = backend.adopt(model, tokenizer)
            if adopted is not None:
                return adopted
        raise TypeError(
            f"{type(model).__name__} is not a model gpt-simple can run: pass what "
            f"load_for_inference returned"
        )


class _Streamed:
    """A run's sink and a streaming listener as one sink: records go to both (the sink
    first), tokens to the listener."""

    def __init__(self, sink: Sink, listener: TokenSink) -> None:
        self.sink = sink
        self.listener = listener

    def put(self, index: int, record: dict[str, Any]) -> None:
        self.sink.put(index, record)
        self.listener.put(index, record)

    def on_token(self, seq: TokenSequence, piece: str) -> None:
        self.listener.on_token(seq, piece)


def _load(run: GroupRun) -> LoadedModel:
    if run.problem is not None:
        raise BackendError(run.problem)
    for warning in run.group.summary.warnings:
        log.warning(warning)
    return run.group.backend.load(run.group.info, run.request)


def _load_error(problems: Sequence[tuple[str, str]]) -> Exception:
    """The error a route's problems make for the API (the field in front, as in a plan)."""
    text = "; ".join(f"{field}: {message}" for field, message in problems)
    if {field for field, _ in problems} <= {"model.checkpoint", "--checkpoint"}:
        return CheckpointError(text)
    return BackendError(text)
