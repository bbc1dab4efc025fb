"""What an interrupted output already holds, checked record by record.

The output of a killed run is a prefix of its records in order, possibly with a torn last line
(SIGKILL mid-write) or a tail of zeros or garbage (a power cut); its spool holds records that
finished early. Recovery keeps every whole line that is exactly what this run would write for
that position, and nothing else:

* each output line must echo its input record (every input key, the effective ``generation``
  block with its seed) and come from the same checkpoint and backend; with ``stale`` groups
  (``--resume=force`` after a change) their records are run again; with ``retry_errors`` so
  are records that carry an ``error``;
* the output is cut before the first line that fails (or is torn); whole, valid lines after
  the cut, and valid spool entries, are moved into a fresh spool, so nothing finished is lost.

Every record is therefore either kept once (in the output prefix or the spool) or run again:
never duplicated, never skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from gpt_simple_core.output.spool import dumps, iter_spool, open_exclusive
from gpt_simple_core.plan.planned import PlannedGroup, PlannedRecord


@attrs.frozen
class Recovered:
    """``written``: records of the order kept in the output (``keep_bytes`` long);
    ``spooled``: index -> offset of the records kept in the (new) spool; ``dropped``: lines
    that will run again."""

    keep_bytes: int
    written: int
    spooled: dict[int, int]
    dropped: int
    failed: int = 0  # kept records that carry an ``error``

    def done(self, order: Sequence[int]) -> set[int]:
        return set(order[: self.written]) | set(self.spooled)


Expected = dict[int, tuple[PlannedRecord, PlannedGroup]]


def expected_records(groups: Sequence[PlannedGroup]) -> Expected:
    return {r.record.index: (r, g) for g in groups for r in g.records}


def matches(
    obj: Any,
    planned: PlannedRecord,
    group: PlannedGroup,
    *,
    stale: Container[tuple[str, str]] = (),
    retry_errors: bool = False,
) -> bool:
    """Whether ``obj`` (an output line, parsed) is what this run writes for ``planned``."""
    if not isinstance(obj, dict) or ("completion" in obj) == ("error" in obj):
        return False
    if retry_errors and "error" in obj:
        return False
    for key, value in planned.record.raw.items():
        if key != "generation" and obj.get(key, _MISSING) != value:
            return False
    if obj.get("generation") != planned.params.to_json():
        return False
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        return False
    origin = (meta.get("checkpoint"), meta.get("backend"))
    return origin == (str(group.info.path), group.backend.name) and origin not in stale


_MISSING = object()


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of ``path``; the last item may lack its newline (a torn line)."""
    with path.open("rb") as stream:
        offset = 0
        for line in stream:
            yield offset, line
            offset += len(line)


def _parse(line: bytes) -> Any:
    if not line.endswith(b"\n"):
        return _MISSING  # torn
    try:
        return json.loads(line)
    except ValueError:  # zeros, garbage, a half-written line: not a record
        return _MISSING


def recover(
    output: Path,
    spool: Path,
    order: Sequence[int],
    expected: Expected,
    *,
    stale: Container[tuple[str, str]] = (),
    retry_errors: bool = False,
    shape: Any = None,
) -> Recovered:
    """Check ``output`` and ``spool`` against the plan; cut the output back to its valid
    prefix and rewrite the spool with every other valid record. Returns what was kept.
    ``shape``: the output shape of another format (``matches`` and ``failed`` as here, e.g.
    :class:`~gpt_simple_core.output.openai.OpenAIOutput`)."""
    check = matches if shape is None else shape.matches

    def ok(index: int, obj: Any) -> bool:
        entry = expected.get(index)
        return entry is not None and check(obj, *entry, stale=stale, retry_errors=retry_errors)

    def failed_line(obj: Any) -> bool:
        return "error" in obj if shape is None else shape.failed(obj)

    keep_bytes, written, dropped, failed = 0, 0, 0, 0
    kept: dict[int, Any] = {}  # index -> record, valid but past the cut
    cut = False
    if output.exists():
        for position, (offset, line) in enumerate(_lines(output)):
            index = order[position] if position < len(order) else None
            obj = _parse(line)
            valid = index is not None and obj is not _MISSING and ok(index, obj)
            if not cut and valid:
                keep_bytes, written = offset + len(line), written + 1
                failed += failed_line(obj)
                continue
            cut = True
            if valid and index is not None:
                kept[index] = obj
            elif line.strip(b"\0 \n"):
                dropped += 1
    if spool.exists():
        in_output = set(order[:written])
        for _, index, record in iter_spool(spool):
            if index not in kept and index not in in_output and ok(index, record):
                kept[index] = record
    spooled = _rewrite_spool(spool, kept)
    with output.open("ab") as stream:  # creates an empty output when there was none
        stream.truncate(keep_bytes)
    failed += sum(failed_line(record) for record in kept.values())
    return Recovered(keep_bytes, written, spooled, dropped, failed)


def _rewrite_spool(spool: Path, kept: dict[int, Any]) -> dict[int, int]:
    """A new spool holding ``kept`` (written beside, then renamed over the old one)."""
    temp = spool.with_name(f".{spool.name}.{os.getpid()}.new")
    temp.unlink(missing_ok=True)
    offsets = {}
    offset = 0
    stream: IO[bytes] = open_exclusive(temp)
    with stream:
        for index in sorted(kept):
            line = (dumps({"index": index, "record": kept[index]}) + "\n").encode("utf-8")
            offsets[index] = offset
            offset += len(line)
            stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, spool)
    return offsets
