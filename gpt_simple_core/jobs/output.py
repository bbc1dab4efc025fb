"""A run into an output file that survives being killed and never destroys what a user has.

:class:`OutputJob` wraps a :class:`~gpt_simple_core.session.Session` run with what an output
file needs (docs/long-sweeps.md):

1. refusals, before anything is planned or loaded: ``--output`` naming the input (also through
   a symbolic or hard link); an output that exists and is not empty, unless ``--resume``
   continues it or ``--overwrite`` replaces it; a second run writing the same output at the
   same time (an exclusive lock, naming the holder's pid);
2. a sidecar folder ``OUT.gpt-simple/`` with the manifest (:mod:`.manifest`), the spool and
   the lock;
3. resuming: the manifest must describe the same job (the differences are named; with
   ``force`` only the records whose inputs changed run again), the output's valid prefix and
   the spool are kept (:mod:`.recovery`), and only the other records run. The finished file is
   byte for byte what an uninterrupted run writes (the run seed is taken from the manifest).
"""

from __future__ import annotations

import fcntl
import os
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import attrs
import structlog

from gpt_simple_core.engine.executor import Executor
from gpt_simple_core.engine.result import RunResult
from gpt_simple_core.engine.stop import Stop
from gpt_simple_core.errors import ConfigError
from gpt_simple_core.jobs.manifest import (
    COMPLETE,
    RUNNING,
    STOPPED,
    Manifest,
    build_manifest,
    changed_groups,
    differences,
    read_manifest,
    write_manifest,
)
from gpt_simple_core.jobs.recovery import Recovered, expected_records, recover
from gpt_simple_core.output.openai import OpenAIOutput
from gpt_simple_core.output.spool import SPOOL_FILE, Spool
from gpt_simple_core.output.writer import OrderedWriter
from gpt_simple_core.plan.planned import Planned
from gpt_simple_core.records.source import InputDigest
from gpt_simple_core.session import Session
from gpt_simple_core.settings import Settings

log = structlog.get_logger(__name__)

SIDECAR_SUFFIX = ".gpt-simple"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "lock"
#: The input positions a shard's output holds, in its order: little-endian uint64 each, so
#: merge can stream any number of records.
INDEXES_FILE = "indexes.u64"


@attrs.frozen
class OutputMode:
    """``resume``: continue an interrupted output (``force``: even if the job changed, running
    again the records whose inputs changed); ``overwrite``: replace whatever is there;
    ``retry_errors``: on resume, run again the records that carry an ``error``."""

    resume: bool = False
    overwrite: bool = False
    force: bool = False
    retry_errors: bool = False

    def __attrs_post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")


def sidecar_of(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class OutputJob:
    """One run into ``output``; use as a context manager (it holds the output's lock)."""

    def __init__(self, output: Path, mode: OutputMode, *, input_path: Path | None) -> None:
        self.given = output  # as the user wrote it, for messages
        self.output = output.absolute()
        self.mode = mode
        self.sidecar = sidecar_of(self.output)
        self.manifest_path = self.sidecar / MANIFEST_FILE
        self.spool_path = self.sidecar / SPOOL_FILE
        self._lock: IO[str] | None = None
        self._check_paths(input_path)
        self.previous: Manifest | None = None

    # Before planning ---------------------------------------------------------------------------
    def _check_paths(self, input_path: Path | None) -> None:
        if self.output.is_dir():
            raise ConfigError(f"cannot write output {self.given}: it is a directory")
        if input_path is not None and self.output.exists() and _same_file(self.output, input_path):
            raise ConfigError(
                f"--output {self.output} is the input file {input_path} (or a link to it): "
                f"writing it would destroy the input; choose another output"
            )

    def __enter__(self) -> OutputJob:
        try:
            self.sidecar.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cannot write output {self.given}: {reason}") from None
        self._lock = _lock(self.sidecar / LOCK_FILE, self.output)
        try:
            self._decide()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _decide(self) -> None:
        """Whether this run starts fresh or resumes, and what it refuses to touch."""
        refusal = self.refusal()
        if refusal is not None:
            raise ConfigError(refusal)
        if self.mode.resume:
            self.previous = read_manifest(self.manifest_path)
            return
        self._start_over()

    def refusal(self) -> str | None:
        """Why this run may not write its output as asked (None: it may). Reads only, so a
        dry-run can say it too."""
        has_output = self.output.exists() and self.output.stat().st_size > 0
        previous = read_manifest(self.manifest_path)
        if self.mode.overwrite:
            return None
        if self.mode.resume:
            if previous is None and has_output:
                return (
                    f"cannot resume {self.output}: it has no gpt-simple manifest "
                    f"({self.manifest_path}), so it cannot be checked; --overwrite replaces it"
                )
            return None
        lines = _count_lines(self.output)
        if previous is not None and previous.status == COMPLETE and lines == previous.records:
            return (
                f"{self.output} is the complete output of an earlier run: --overwrite replaces "
                f"it (--resume would find nothing to do)"
            )
        if previous is not None and (has_output or self.spool_path.exists()):
            return (
                f"{self.output} holds {lines} of the {previous.records} records of an "
                f"interrupted run: --resume continues it, --overwrite starts over"
            )
        if has_output:
            return (
                f"{self.output} exists and was not written by gpt-simple (no manifest): "
                f"--overwrite replaces it"
            )
        return None

    def dry_run_refusal(self) -> str | None:
        """What a real run would refuse about the output, found without writing anything: the
        folder it goes into cannot be written, or :meth:`refusal`."""
        folder = self.output.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the real run creates the missing folders from here
        if not folder.is_dir():
            return f"cannot write output {self.given}: {folder} is not a folder"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot write output {self.given}: {folder} is not writable"
        return self.refusal()

    def _start_over(self) -> None:
        """Remove this output's own state (never anything we did not create)."""
        self.manifest_path.unlink(missing_ok=True)
        self.spool_path.unlink(missing_ok=True)
        self.previous = None

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with the previous run's run seed when resuming without one, so every
        derived seed, and so every sampled completion, is what it was."""
        if self.previous is None or settings.run_seed is not None:
            return settings
        generation = attrs.evolve(settings.generation, seed=self.previous.run_seed)
        return attrs.evolve(settings, generation=generation)

    # Running -----------------------------------------------------------------------------------
    def run(
        self,
        session: Session,
        planned: Planned,
        digest: InputDigest,
        *,
        stop: Stop | None = None,
        order: Sequence[int] | None = None,
        order_info: dict | None = None,
        executor: Executor | None = None,
        shape: OpenAIOutput | None = None,
    ) -> RunResult:
        """Run what is left of ``planned`` into the output; returns what this run did.
        ``shape``: the lines are another format's (``--output-format openai``)."""
        order = list(range(planned.plan.records)) if order is None else list(order)
        manifest = build_manifest(
            digest=digest,
            input_records=planned.plan.records,
            settings=session.settings,
            run_seed=planned.run_seed,
            groups=planned.groups,
            order=order_info or {"all": planned.plan.records},
            records=len(order),
        )
        recovered = self._recover(manifest, planned, order, shape)
        if "shard" in manifest.order:
            write_indexes(self.sidecar / INDEXES_FILE, order)
        done = recovered.done(order) if recovered else set()
        if recovered and len(done) == len(order):
            log.info("the output is complete: nothing to run", output=str(self.output))
        with self.output.open("a" if recovered else "w", encoding="utf-8") as stream:
            # recovery rewrote the spool (perhaps empty); a fresh run starts without one
            if recovered:
                spool = Spool.reopen(self.spool_path, recovered.spooled)
            else:
                spool = Spool(self.spool_path)
            written = recovered.written if recovered else 0
            writer = OrderedWriter(
                stream,
                order,
                spool,
                written=written,
                name=str(self.output),
                shape=shape.line if shape else None,
            )
            failed = recovered.failed if recovered else 0  # kept records with an error
            self._note(manifest.with_progress(RUNNING, writer.position, writer.pending, failed))
            try:
                result = session.run(planned, writer, stop=stop, skip=done, executor=executor)
                failed += result.failed
            finally:
                writer.close()
                status = COMPLETE if writer.complete else STOPPED
                self._note(manifest.with_progress(status, writer.position, writer.pending, failed))
        # the exit status counts kept failures too: the file holds their errors
        return attrs.evolve(result, failed=failed)

    def _note(self, manifest: Manifest) -> None:
        """Write the manifest; a failure to (a full disk) must not hide the run's own end."""
        try:
            write_manifest(self.manifest_path, manifest)
        except OSError as exc:
            log.warning("cannot update the manifest", path=str(self.manifest_path), error=str(exc))

    def _recover(
        self,
        manifest: Manifest,
        planned: Planned,
        order: list[int],
        shape: OpenAIOutput | None = None,
    ) -> Recovered | None:
        """On resume: check the job is the same one, then what the output holds."""
        previous = self.previous
        if previous is None:
            return None
        changes = differences(previous, manifest)
        if changes and not self.mode.force:
            listed = "\n  ".join(changes)
            raise ConfigError(
                f"refusing to resume {self.output}: it was written by another job:\n  {listed}\n"
                f"(--resume=force keeps the records whose inputs did not change and runs the "
                f"others again; --overwrite starts over)"
            )
        stale = {(g.checkpoint, g.backend) for g in changed_groups(previous, manifest)}
        if changes:
            log.warning("resuming a changed job: what changed runs again", changes=changes)
        recovered = recover(
            self.output,
            self.spool_path,
            order,
            expected_records(planned.groups),
            stale=stale,
            retry_errors=self.mode.retry_errors,
            shape=shape,
        )
        log.info(
            "resuming",
            output=str(self.output),
            kept=recovered.written,
            spooled=len(recovered.spooled),
            dropped=recovered.dropped,
            to_run=len(order) - len(recovered.done(order)),
        )
        return recovered


def write_indexes(path: Path, order: Sequence[int]) -> None:
    """The positions of ``order`` beside the output, atomically."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    values = array("Q", order)
    if sys.byteorder != "little":
        values.byteswap()
    with temp.open("wb") as stream:
        values.tofile(stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))


def _lock(path: Path, output: Path) -> IO[str]:
    """An exclusive lock on ``path`` (held while the run lasts), or a :class:`ConfigError`
    naming the process that holds it."""
    stream = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        holder = stream.read().strip() or "unknown"
        stream.close()
        raise ConfigError(
            f"{output} is being written by another gpt-simple run (pid {holder}); wait for it "
            f"to finish, or stop it, then --resume"
        ) from None
    stream.seek(0)
    stream.truncate()
    stream.write(str(os.getpid()))
    stream.flush()
    return stream
