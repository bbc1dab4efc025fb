"""Running a plan: groups in plan order, one model in memory at a time, ordered JSONL out.

Before anything loads, each group's ``auto`` dtype and device are resolved by its backend and
groups that resolve alike are merged, so a checkpoint never loads twice. A model that fails to
load gives each of its records an ``error``; a record that fails gets an ``error``; the run goes
on either way.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import attrs
import structlog

from gpt_simple_core.engine.results import error_entry, group_meta, output_record, sequence_meta
from gpt_simple_core.engine.scheduler import GroupScheduler
from gpt_simple_core.engine.sequence import Sequence
from gpt_simple_core.errors import ConfigError
from gpt_simple_core.output.progress import Progress
from gpt_simple_core.output.writer import OrderedWriter, spool_path_for
from gpt_simple_core.plan.planner import Planned, PlannedGroup, PlannedRecord
from gpt_simple_core.protocol import LoadedModel, LoadRequest
from gpt_simple_core.settings import Settings

log = structlog.get_logger(__name__)


class Terminated(BaseException):
    """SIGTERM arrived (e.g. Slurm preemption): stop, keeping what is finished.

    A ``BaseException`` (like ``KeyboardInterrupt``): the signal usually lands inside a
    backend's forward call, and the loop's per-record ``except Exception`` must not turn it
    into a record error and carry on.
    """


@attrs.define
class GroupRun:
    group: PlannedGroup
    request: LoadRequest
    records: list[PlannedRecord]


def resolve_groups(groups: list[PlannedGroup]) -> list[GroupRun]:
    """Resolve ``auto`` per group and merge groups that resolve to the same load."""
    runs: dict[tuple, GroupRun] = {}
    for group in groups:
        assert group.backend is not None
        try:
            request = group.backend.resolve(group.request)
        except Exception as exc:  # the load will fail the same way and report it per record
            log.warning(
                "could not resolve dtype/device", backend=group.backend.name, error=str(exc)
            )
            request = group.request
        options = tuple(sorted(request.options.items()))
        key = (
            group.info.path,
            group.info.tokenizer,
            group.backend.name,
            request.dtype,
            request.device,
            request.threads,
            options,
        )
        if key in runs:
            runs[key].records.extend(group.records)
            log.info("merged groups that resolve alike", checkpoint=str(group.info.path))
        else:
            runs[key] = GroupRun(group, request, list(group.records))
    for run in runs.values():
        run.records.sort(key=lambda r: r.record.index)
    return list(runs.values())


class Runner:
    """Feeds finished records to the writer and the progress display."""

    def __init__(self, writer: OrderedWriter, progress: Progress, settings: Settings) -> None:
        self.writer = writer
        self.progress = progress
        self.settings = settings
        self.failed = 0

    def emit(self, planned: PlannedRecord, record: dict[str, Any], failed: bool) -> None:
        self.writer.put(planned.record.index, record)
        self.failed += failed
        self.progress.record_done(failed)

    def run_group(self, run: GroupRun) -> None:
        group = run.group
        backend = group.backend
        assert backend is not None
        requested = {"dtype": run.request.dtype, "device": run.request.device}
        log.info(
            "loading",
            checkpoint=str(group.info.path),
            backend=backend.name,
            records=len(run.records),
            **requested,
        )
        try:
            model = backend.load(group.info, run.request)
        except Exception as exc:
            log.error("model failed to load", checkpoint=str(group.info.path), error=str(exc))
            meta = group_meta(
                group.info, backend.name, group.summary.backend_selected_because, None, requested
            )
            for planned in run.records:
                self.emit(planned, output_record(planned, meta, error=error_entry(exc)), True)
            return
        try:
            self._decode(run, model)
        finally:
            model.close()
            del model
            gc.collect()

    def _decode(self, run: GroupRun, model: LoadedModel) -> None:
        group = run.group
        assert group.backend is not None
        shared = group_meta(
            group.info, group.backend.name, group.summary.backend_selected_because, model, {}
        )

        def done(seq: Sequence) -> None:
            meta = sequence_meta(shared, seq, model)
            self.emit(seq.planned, output_record(seq.planned, meta, completion=seq.text()), False)

        def failed(planned: PlannedRecord, exc: BaseException) -> None:
            log.warning("record failed", line=planned.record.line, error=str(exc))
            record = output_record(planned, shared, error=error_entry(exc))
            self.emit(planned, record, True)

        run_options = self.settings.run
        GroupScheduler(
            model,
            on_done=done,
            on_error=failed,
            batch_size=run_options.batch_size,
            max_batch_tokens=run_options.max_batch_tokens,
            on_tokens=self.progress.add_tokens,
        ).run(run.records)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _open_output(output: Path | None) -> Iterator[IO[str]]:
    if output is None:
        yield sys.stdout
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        stream = output.open("w", encoding="utf-8")
    except OSError as exc:  # a bad --output is bad input, reported before anything loads
        raise ConfigError(f"cannot write output {output}: {exc.strerror or exc}") from None
    with stream:
        yield stream


def execute(planned: Planned, settings: Settings, output: Path | None = None) -> int:
    """Run a checked plan; return the process exit status."""
    from gpt_simple_core.cli.main import EXIT_OK, EXIT_RECORD_ERRORS, EXIT_TERMINATED

    total = planned.plan.records
    runs = resolve_groups(planned.groups)
    with _open_output(output) as stream, _sigterm_raises():
        writer = OrderedWriter(stream, total, spool_path_for(output))
        progress = Progress(total)
        runner = Runner(writer, progress, settings)
        try:
            for run in runs:
                runner.run_group(run)
        except Terminated:
            log.warning("terminated (SIGTERM); finished records are kept")
            return EXIT_TERMINATED
        finally:
            progress.close()
            writer.close()
    log.info("done", records=total, failed=runner.failed, tokens=progress.tokens)
    return EXIT_RECORD_ERRORS if runner.failed else EXIT_OK
