"""Ordered JSONL output: records in input order, whole lines only, durable at an interval.

Records are written as soon as every record before them is: a record that finishes early
waits in the :class:`~gpt_simple_core.output.spool.Spool`, not in memory. ``order`` lists the
input positions this output holds, ascending: every record of the input for a plain run, a
shard's records for a shard. The output is therefore always an unbroken prefix of ``order``.

Each record is one ``write`` of its whole line, then a flush; the file is fsynced at most every
:data:`FSYNC_SECONDS` and when the writer closes, so a power cut loses at most the last
seconds and can only leave a torn or zero-filled tail, which a resumed run drops. When a write
fails (a full disk, an I/O error) the file is cut back to its last whole line and the run stops
(:class:`~gpt_simple_core.output.spool.OutputFailed`).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from gpt_simple_core.output.spool import OutputFailed, Spool, dumps

FSYNC_SECONDS = 2.0


def _is_regular_file(stream: IO[str]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


class OrderedWriter:
    """Writes the records of ``order`` (input positions, ascending) in that order, whatever
    order they arrive in. ``written`` records of ``order`` are already in the stream (a resumed
    run); the spool may already hold some of the rest. ``shape`` turns each record into the
    line written (``--output-format openai``), before it is spooled, so output and spool hold
    the same shape."""

    def __init__(
        self,
        stream: IO[str],
        order: Sequence[int],
        spool: Spool,
        *,
        written: int = 0,
        name: str = "the output",
        shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.stream = stream
        self.shape = shape
        self.order = order
        self.spool = spool
        self.position = written  # records of `order` in the output
        self.name = name
        self._seekable = _is_regular_file(stream)
        self._good = stream.tell() if self._seekable else 0
        self._synced = time.monotonic()
        self._drain()

    @property
    def next_index(self) -> int | None:
        """The input position the output waits for (``None``: all of ``order`` is written)."""
        return self.order[self.position] if self.position < len(self.order) else None

    @property
    def complete(self) -> bool:
        return self.position >= len(self.order)

    @property
    def pending(self) -> int:
        """Records finished but waiting in the spool for their predecessors."""
        return len(self.spool)

    def put(self, index: int, record: dict[str, Any]) -> None:
        if self.shape is not None:
            record = self.shape(record)
        if index != self.next_index:
            self.spool.add(index, record)
            return
        self._write(record)
        self._drain()

    def _drain(self) -> None:
        while self.next_index is not None and self.next_index in self.spool:
            self._write(self.spool.take(self.next_index))

    def _write(self, record: dict[str, Any]) -> None:
        line = dumps(record) + "\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except BrokenPipeError:
            raise  # the reader (`| head`) left: the CLI exits quietly
        except OSError as exc:
            self._cut_back()
            raise OutputFailed(self.name, exc) from None
        self.position += 1
        if self._seekable:
            self._good = self.stream.tell()
            if time.monotonic() - self._synced >= FSYNC_SECONDS:
                self.sync()

    def _cut_back(self) -> None:
        """After a failed write: drop whatever part of the line reached the file."""
        if not self._seekable:
            return
        try:
            self.stream.truncate(self._good)
            self.stream.seek(self._good)
        except (OSError, ValueError):
            pass  # the resumed run drops a torn tail anyway

    def sync(self) -> None:
        """Make what is written durable (output and spool)."""
        self._synced = time.monotonic()
        if self._seekable:
            try:
                os.fsync(self.stream.fileno())
                self.spool.sync()
            except OSError as exc:
                raise OutputFailed(self.name, exc) from None

    def close(self) -> None:
        """Make everything durable; delete the spool when everything was written, else keep
        it (a resumed run takes its records)."""
        try:
            self.sync()
        finally:
            self.spool.close(finished=self.complete)
