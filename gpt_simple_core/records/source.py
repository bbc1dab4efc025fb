"""Where records come from: a file, a pipe or FIFO (``<(...)``), or stdin, read once.

The input is streamed line by line, never loaded whole: it is hashed on the way (a resumed run
checks it is the same input) and each line is capped at :data:`MAX_LINE_BYTES` (an endless
line, ``/dev/zero``, would otherwise grow without bound). A line over the cap is a problem of
that line, and reading stops there: nothing after it can be trusted to be a line at all.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import attrs

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.records.parse import GENERATE, Record, parse_lines
from gpt_simple_core.records.problems import Problem

#: The longest input line read, in bytes (``--max-line-bytes``): far above any real prompt.
MAX_LINE_BYTES = 64 << 20
STDIN = "-"


_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_line_limit(text: str) -> int:
    """``--max-line-bytes``: a positive number of bytes, optionally with a K, M or G (binary)
    suffix (``64M``). Raises ``ValueError`` saying what would work."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, suffix = (raw[:-1], raw[-1]) if raw[-1:] in ("k", "m", "g") else (raw, "")
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"{text!r} is not a positive number of bytes (such as 1048576 or 64M)")
    return int(number) * _SUFFIXES[suffix]


@attrs.define
class InputDigest:
    """What was read: the name problems use, the file (``None`` for stdin) and its sha256."""

    name: str
    path: Path | None
    sha256: str = ""
    bytes: int = 0


def _check_readable(source: str) -> Path:
    """``source`` as a path that can be read as a stream, or a :class:`ConfigError` saying
    precisely why not (missing, a directory, unreadable)."""
    if "\0" in source:
        raise ConfigError(f"input file {source!r}: a path cannot contain a NUL byte")
    try:
        path = Path(source).expanduser()
        mode = path.stat().st_mode
    except RuntimeError as exc:  # ~user of a user that does not exist
        raise ConfigError(f"input file {source}: {exc} (a ~user that does not exist?)") from None
    except FileNotFoundError:
        raise ConfigError(f"input file {source} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"input file {source}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"input {source} is a directory, not a JSONL file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"input file {source} is not readable (permission denied)")
    return path


class _HashingLines:
    """Lines of a binary stream, each at most ``limit`` bytes, hashed as they pass."""

    def __init__(self, stream: IO[bytes], digest: InputDigest, limit: int) -> None:
        self.stream = stream
        self.digest = digest
        self.limit = limit
        self.hash = hashlib.sha256()
        self.too_long: int | None = None  # the line number that broke the cap

    def __iter__(self) -> Iterator[bytes]:
        number = 0
        while True:
            line = self.stream.readline(self.limit + 1)
            if not line:
                break
            number += 1
            self.hash.update(line)
            self.digest.bytes += len(line)
            if len(line) > self.limit and not line.endswith(b"\n"):
                self.too_long = number
                yield b""  # keeps the numbering; the problem is reported by read_records
                break
            yield line
        self.digest.sha256 = self.hash.hexdigest()


#: Turns the lines of an input (bytes, numbered from 1) into records and problems.
LineParser = Callable[[Iterable[bytes]], tuple[list[Record], list[Problem]]]


def read_records(
    source: str,
    *,
    allow_blocks: bool = True,
    max_line_bytes: int = MAX_LINE_BYTES,
    kind: str = GENERATE,
) -> tuple[list[Record], list[Problem], InputDigest]:
    """Parse the JSONL records of ``source`` (a path, a FIFO, ``/dev/fd/N``, or ``-`` for
    stdin); every structural problem is returned, none raised."""
    return read_source(
        source,
        max_line_bytes,
        lambda lines: parse_lines(lines, allow_blocks=allow_blocks, kind=kind),
    )


def read_source(
    source: str, max_line_bytes: int, parse: LineParser
) -> tuple[list[Record], list[Problem], InputDigest]:
    """``parse`` over the lines of ``source`` (a path, a FIFO, ``/dev/fd/N``, or ``-``),
    streamed and hashed, each line at most ``max_line_bytes`` (a longer one is a problem and
    reading stops there)."""
    if source == STDIN:
        return _read(sys.stdin.buffer, InputDigest("<stdin>", None), max_line_bytes, parse)
    path = _check_readable(source)
    try:
        with path.open("rb") as stream:
            return _read(stream, InputDigest(source, path), max_line_bytes, parse)
    except OSError as exc:
        raise ConfigError(f"input file {source}: {exc.strerror or exc}") from None


def _read(
    stream: IO[bytes], digest: InputDigest, limit: int, parse: LineParser
) -> tuple[list[Record], list[Problem], InputDigest]:
    lines = _HashingLines(stream, digest, limit)
    records, problems = parse(lines)
    if lines.too_long is not None:
        message = (
            f"line is longer than {limit} bytes (the limit, --max-line-bytes); reading stopped here"
        )
        problems.append(Problem(lines.too_long, "", message))
    if not digest.sha256:
        digest.sha256 = lines.hash.hexdigest()
    return records, problems, digest
