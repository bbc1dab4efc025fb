"""Ordered JSONL output with a spool file, so memory stays bounded and nothing finished is lost.

Records are written in input order as soon as the next one is ready, flushed one by one.
A record that finishes before its predecessors (they belong to a later group, or are still
decoding) goes to a spool file beside the output, not to memory; only its offset is kept.
When the run ends normally the spool is deleted. If the process dies, the spool is kept and its
path is in the log: every finished completion is either in the output or in the spool, one JSON
object per line as ``{"index": N, "record": {...}}``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import structlog

log = structlog.get_logger(__name__)


def default_spool_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpt-simple" / "spool"


def spool_path_for(output: Path | None) -> Path:
    """Beside the output file; for stdout, in the user's cache directory."""
    if output is not None:
        output = output.absolute()  # the log names it; a relative path helps nobody later
        return output.with_name(output.name + ".spool.jsonl")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return default_spool_dir() / f"run-{stamp}-{os.getpid()}.spool.jsonl"


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


class OrderedWriter:
    """Writes records numbered 0..total-1 in order, whatever order they arrive in."""

    def __init__(self, stream: IO[str], total: int, spool_path: Path) -> None:
        self.stream = stream
        self.total = total
        self.spool_path = spool_path
        self.next_index = 0
        self._spool: IO[str] | None = None
        self._offsets: dict[int, int] = {}

    @property
    def pending(self) -> int:
        """Records finished but waiting in the spool for their predecessors."""
        return len(self._offsets)

    def put(self, index: int, record: dict[str, Any]) -> None:
        if index != self.next_index:
            self._to_spool(index, record)
            return
        self._write(record)
        while self.next_index in self._offsets:
            self._write(self._from_spool(self._offsets.pop(self.next_index)))

    def _write(self, record: dict[str, Any]) -> None:
        self.stream.write(dumps(record) + "\n")
        self.stream.flush()
        self.next_index += 1

    def _to_spool(self, index: int, record: dict[str, Any]) -> None:
        if self._spool is None:
            self._spool = self._open_spool()
            log.info(
                "finished records waiting for earlier ones are spooled", spool=str(self.spool_path)
            )
        self._spool.seek(0, os.SEEK_END)
        self._offsets[index] = self._spool.tell()
        self._spool.write(dumps({"index": index, "record": record}) + "\n")
        self._spool.flush()

    def _open_spool(self) -> IO[str]:
        try:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            return self.spool_path.open("w+", encoding="utf-8")
        except OSError as exc:
            # An unwritable cache directory must not cost the run: spool to the temp dir.
            fallback = Path(tempfile.gettempdir()) / self.spool_path.name
            log.warning("cannot create the spool; using the temp dir", error=str(exc))
            self.spool_path = fallback
            return fallback.open("w+", encoding="utf-8")

    def _from_spool(self, offset: int) -> dict[str, Any]:
        assert self._spool is not None
        self._spool.seek(offset)
        return json.loads(self._spool.readline())["record"]

    def close(self) -> None:
        """Delete the spool when everything was written; otherwise keep it and say where."""
        if self._spool is not None:
            self._spool.close()
            if self.next_index >= self.total and not self._offsets:
                self.spool_path.unlink(missing_ok=True)
            else:
                log.warning(
                    "run ended early: finished records not yet in the output are in the spool",
                    spool=str(self.spool_path),
                    written=self.next_index,
                    spooled=len(self._offsets),
                )
