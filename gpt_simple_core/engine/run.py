"""Running planned groups: in plan order, one model in memory at a time, records into a sink.

Groups arrive resolved (:mod:`gpt_simple_core.engine.groups`). A model that fails to load
gives each of its records an ``error``; a record that fails gets an ``error``; the run goes on
either way. A :class:`~gpt_simple_core.engine.stop.Stop` ends it early, between decode steps.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from gpt_simple_core.engine.groups import GroupRun
from gpt_simple_core.engine.output_records import (
    error_entry,
    group_meta,
    output_record,
    samples_record,
    sequence_meta,
)
from gpt_simple_core.engine.result import RunResult
from gpt_simple_core.engine.samples import Gatherer, expand, original
from gpt_simple_core.engine.scheduler import GroupScheduler
from gpt_simple_core.engine.scoring import Scorer
from gpt_simple_core.engine.stop import Stop, StopRequested
from gpt_simple_core.engine.token_sequence import TokenSequence
from gpt_simple_core.errors import BackendError
from gpt_simple_core.output.progress import Progress
from gpt_simple_core.output.sinks import Sink
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import LoadedModel
from gpt_simple_core.records.parse import GENERATE
from gpt_simple_core.settings import RunOptions

log = structlog.get_logger(__name__)


class Engine:
    """Feeds each group's records through its model and every finished record to the sink."""

    def __init__(
        self,
        sink: Sink,
        options: RunOptions,
        *,
        progress: Progress | None = None,
        stop: Stop | None = None,
    ) -> None:
        self.sink = sink
        self.options = options
        self.progress = progress or Progress(0, enabled=False)
        self.stop = stop or Stop()
        self.written = 0
        self.failed = 0

    def emit(self, planned: PlannedRecord, record: dict[str, Any], failed: bool) -> None:
        self.sink.put(planned.record.index, record)
        self.written += 1
        self.failed += failed
        self.progress.record_done(failed)

    def run(self, runs: Iterable[GroupRun], total: int) -> RunResult:
        """Every group in order, until done or stopped."""
        stopped = None
        try:
            for run in runs:
                self.stop.check()
                self.run_group(run)
        except StopRequested as exc:
            stopped = exc.reason
        finally:
            self.progress.close()
        return RunResult(total, self.written, self.failed, self.progress.tokens, stopped)

    def run_group(self, run: GroupRun) -> None:
        group, backend = run.group, run.group.backend
        requested = {"dtype": run.request.dtype, "device": str(run.request.device)}
        for note in group.summary.notes:
            log.info(note, checkpoint=str(group.info.path))
        for warning in group.summary.warnings:
            log.warning(warning, checkpoint=str(group.info.path))
        log.info(
            "loading",
            checkpoint=str(group.info.path),
            backend=backend.name,
            records=len(run.records),
            **requested,
        )
        try:
            if run.problem is not None:
                raise BackendError(run.problem)
            with self.stop.interruptible():
                model = backend.load(group.info, run.request)
        except Exception as exc:
            log.error("model failed to load", checkpoint=str(group.info.path), error=str(exc))
            because = group.summary.backend_selected_because
            meta = group_meta(group.info, backend.name, because, None, requested)
            for planned in run.records:
                self.emit(planned, output_record(planned, meta, error=error_entry(exc)), True)
            return
        try:
            shared = group_meta(
                group.info, backend.name, group.summary.backend_selected_because, model, {}
            )
            self.decode(model, run.records, shared)
        finally:
            model.close()
            del model
            gc.collect()

    def decode(
        self, model: LoadedModel, records: Iterable[PlannedRecord], shared: Mapping[str, Any]
    ) -> None:
        """Generate (or score) ``records`` with ``model``; ``shared`` is the ``meta`` they
        all carry."""
        records = list(records)
        if records and records[0].record.task != GENERATE:
            self.score(model, records, shared)
            return

        gathered = Gatherer()  # the samples of records with generation.n > 1

        def done(seq: TokenSequence) -> None:
            parent = original(seq.planned)
            if parent is not seq.planned:
                samples = gathered.done(seq)
                if samples is not None:
                    self.emit(parent, samples_record(parent, samples, shared, model), False)
                return
            meta = sequence_meta(shared, seq, model)
            extra = seq.logprob_fields()
            record = output_record(seq.planned, meta, completion=seq.text(), extra=extra)
            self.emit(seq.planned, record, False)

        def failed(planned: PlannedRecord, exc: BaseException) -> None:
            parent = original(planned)
            if parent is not planned and not gathered.failed(planned):
                return  # another sample of this record failed first: its error is written
            log.warning("record failed", line=planned.record.line, error=str(exc))
            self.emit(parent, output_record(parent, shared, error=error_entry(exc)), True)

        GroupScheduler(
            model,
            on_done=done,
            on_error=failed,
            batch_size=self.options.batch_size,
            max_batch_tokens=self.options.max_batch_tokens,
            on_tokens=self.progress.add_tokens,
            before_step=self.stop.check,
            on_token=getattr(self.sink, "on_token", None),  # a TokenSink streams
        ).run(expand(records))

    def score(
        self, model: LoadedModel, records: list[PlannedRecord], shared: Mapping[str, Any]
    ) -> None:
        """Score ``records`` (``gpt-simple score``) with ``model``."""

        def done(planned: PlannedRecord, score: dict[str, Any]) -> None:
            self.progress.add_tokens(score["tokens"])
            self.emit(planned, output_record(planned, shared, extra={"score": score}), False)

        def failed(planned: PlannedRecord, exc: BaseException) -> None:
            log.warning("record failed", line=planned.record.line, error=str(exc))
            self.emit(planned, output_record(planned, shared, error=error_entry(exc)), True)

        Scorer(model, on_done=done, on_error=failed, before_step=self.stop.check).run(records)
