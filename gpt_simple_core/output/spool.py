"""The spool: finished records waiting for earlier ones, on disk instead of in memory.

One JSON object a line, ``{"index": N, "record": {...}}`` (N: the record's 0-based position in
the input), appended whole and flushed, so a killed run leaves every finished record either
in the output or here. Only the offsets stay in memory.

Where it lives:

* beside a file output, inside the output's sidecar folder (``OUT.gpt-simple/spool.jsonl``),
  where a resumed run finds it again (:mod:`gpt_simple_core.jobs`);
* for stdout, in a private folder of its own under ``$XDG_CACHE_HOME/gpt-simple/spool/``
  (``mkdtemp``: mode 0700, a fresh name), deleted when the run ends and swept up by later runs
  when its process is gone and it is older than :data:`STALE_SECONDS`.

Files are created with ``O_EXCL`` and never through a symbolic link, and only files this code
created are ever deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import structlog

log = structlog.get_logger(__name__)

SPOOL_FILE = "spool.jsonl"
OWNER_FILE = "owner"
RUN_PREFIX = "run-"
STALE_SECONDS = 24 * 3600


class OutputFailed(BaseException):
    """Writing the output or the spool failed (disk full, I/O error): the run stops with a
    valid prefix kept. A ``BaseException`` so no per-record handler swallows it."""

    def __init__(self, path: Path | str, exc: OSError) -> None:
        self.path = str(path)
        self.reason = exc.strerror or str(exc)
        super().__init__(f"cannot write {path}: {self.reason}")


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


def open_exclusive(path: Path) -> IO[bytes]:
    """A new file at ``path``, read-write, binary; refuses an existing file or a symbolic
    link (so nobody's link can make us write through it)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags, 0o600), "w+b")


def default_spool_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpt-simple" / "spool"


class Spool:
    """Finished records by input position; the file is created on first use."""

    def __init__(self, path: Path | None, *, private_root: Path | None = None) -> None:
        self.path = path  # None: a private folder under private_root, made on first use
        self._private_root = private_root
        self.private_dir: Path | None = None  # the folder this spool owns (stdout runs)
        self._file: IO[bytes] | None = None
        self._offsets: dict[int, int] = {}
        self.created = False

    @classmethod
    def private(cls, root: Path | None = None) -> Spool:
        """A spool in a fresh private folder (for stdout runs); nothing is created yet."""
        return cls(None, private_root=root or default_spool_root())

    @classmethod
    def reopen(cls, path: Path, entries: dict[int, int]) -> Spool:
        """An existing spool (a resumed run) whose valid entries are at ``entries``."""
        spool = cls(path)
        spool._file = path.open("r+b")
        spool._offsets = dict(entries)
        spool.created = True  # the sidecar's, which this run now owns
        return spool

    def __contains__(self, index: int) -> bool:
        return index in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def add(self, index: int, record: dict[str, Any]) -> None:
        stream = self._open()
        try:
            offset = stream.seek(0, os.SEEK_END)
            stream.write((dumps({"index": index, "record": record}) + "\n").encode("utf-8"))
            stream.flush()
        except OSError as exc:
            raise OutputFailed(self.path, exc) from None
        self._offsets[index] = offset

    def take(self, index: int) -> dict[str, Any]:
        """The record spooled for ``index`` (forgotten here: it is being written out)."""
        assert self._file is not None
        self._file.seek(self._offsets.pop(index))
        return json.loads(self._file.readline())["record"]

    def _open(self) -> IO[bytes]:
        if self._file is None:
            try:
                if self.path is None:
                    self.path = self._make_private_dir() / SPOOL_FILE
                self._file = open_exclusive(self.path)
            except OSError as exc:
                raise OutputFailed(self.path or "the spool", exc) from None
            self.created = True
            log.debug("finished records waiting for earlier ones are spooled", spool=str(self.path))
        return self._file

    def _make_private_dir(self) -> Path:
        assert self._private_root is not None
        prefix = f"{RUN_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-"
        try:
            self._private_root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=self._private_root))
        except OSError as exc:
            # An unwritable cache must not cost the run; mkdtemp in the system temp folder is
            # as private (mode 0700, a name nobody can predict).
            log.warning("cannot create the spool folder; using the temp folder", error=str(exc))
            folder = Path(tempfile.mkdtemp(prefix=prefix))
        (folder / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
        self.private_dir = folder
        return folder

    def sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self, *, finished: bool) -> None:
        """Close; when everything was written out (``finished``), delete what this spool
        created. Otherwise keep it and say where (its records are not in the output yet)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if finished:
            if self.private_dir is not None:
                shutil.rmtree(self.private_dir, ignore_errors=True)
            elif self.path is not None and self.created:
                self.path.unlink(missing_ok=True)
        elif self._offsets:
            log.warning(
                "run ended early: finished records not yet in the output are in the spool",
                spool=str(self.path),
                spooled=len(self._offsets),
            )


def iter_spool(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(offset, index, record) of every whole, valid line of a spool file; a torn or garbled
    line is skipped (its record is run again)."""
    with path.open("rb") as stream:
        offset = 0
        for line in stream:
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                break  # torn: the process died while writing it
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(entry, dict)
                and type(entry.get("index")) is int
                and isinstance(entry.get("record"), dict)
            ):
                yield start, entry["index"], entry["record"]


def clean_stale_spools(root: Path | None = None, *, now: float | None = None) -> list[Path]:
    """Delete the private spool folders of runs whose process is gone and which are older
    than :data:`STALE_SECONDS` (only folders this code makes: ``run-*`` with an owner file)."""
    root = root or default_spool_root()
    now = time.time() if now is None else now
    removed = []
    if not root.is_dir():
        return removed
    for folder in root.iterdir():
        owner = folder / OWNER_FILE
        if not folder.name.startswith(RUN_PREFIX) or folder.is_symlink() or not owner.is_file():
            continue
        try:
            pid = int(owner.read_text(encoding="ascii"))
            age = now - owner.stat().st_mtime
        except (OSError, ValueError):
            continue
        if age < STALE_SECONDS or _alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed stale spools of dead runs", count=len(removed), folder=str(root))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
