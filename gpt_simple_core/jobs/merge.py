"""Merging the outputs of a sweep's shards back into one output, in input order.

Every shard's output has a manifest and the list of input positions it holds
(``OUT.gpt-simple/indexes.u64``), so merging needs neither a plan nor the checkpoints, and
streams: it holds one line per shard and reads the input once (for the record ids its messages
name), whatever the size of the sweep.

Before writing, it checks that the shards belong together (the same input, hashed again here,
the same defaults, run seed, shard count and assignment) and that every record of the input
appears exactly once: a missing shard, an unfinished one, or a record in two shards is named
(exit 2 from the CLI) and nothing is written. The merged file is written beside the target and
renamed over it, with a manifest of its own (a complete output, as an unsharded run's).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import sys
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.jobs.manifest import COMPLETE, Manifest, read_manifest, write_manifest
from gpt_simple_core.jobs.output import INDEXES_FILE, MANIFEST_FILE, sidecar_of
from gpt_simple_core.wording import noun, plural

#: How many missing or duplicated records a message names before it counts the rest.
NAMED = 10
CHUNK = 1 << 16


@attrs.frozen
class Shard:
    output: Path
    manifest: Manifest
    number: int  # I of I/N

    @property
    def name(self) -> str:
        return f"shard {self.manifest.order['shard']} ({self.output})"


@attrs.frozen
class MergeResult:
    records: int
    shards: int
    output: Path


def _load_shard(output: Path) -> Shard:
    manifest = read_manifest(sidecar_of(output) / MANIFEST_FILE)
    if manifest is None:
        raise ConfigError(f"{output}: no gpt-simple manifest beside it: not a shard's output")
    if "shard" not in manifest.order:
        raise ConfigError(f"{output} is the output of a whole sweep, not of a shard")
    number = int(str(manifest.order["shard"]).split("/")[0])
    return Shard(output, manifest, number)


def _indexes(shard: Shard) -> Iterator[int]:
    """The input positions ``shard`` holds, streamed from its index file."""
    path = sidecar_of(shard.output) / INDEXES_FILE
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"{shard.name}: cannot read {path}: {exc.strerror}") from None
    with stream:
        while chunk := stream.read(CHUNK * 8):
            values = array("Q")
            values.frombytes(chunk)
            if sys.byteorder != "little":
                values.byteswap()
            yield from values


def _lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(input position, output line) of every whole line of ``shard``'s output."""
    with shard.output.open("rb") as stream:
        for index, line in zip(_indexes(shard), stream, strict=False):
            if not line.endswith(b"\n"):
                return  # torn: the shard did not finish
            yield index, line


def _check_together(shards: Sequence[Shard], input_sha256: str) -> list[str]:
    problems = []
    first = shards[0].manifest
    count = first.order.get("count")
    for shard in shards:
        m = shard.manifest
        if m.input_sha256 != input_sha256:
            sha = m.input_sha256[:12]
            problems.append(f"{shard.name} was run on another input (sha256 {sha}...)")
        for field in ("defaults", "run_seed", "gpt_simple"):
            if getattr(m, field) != getattr(first, field):
                problems.append(f"{shard.name} differs from {shards[0].name} in its {field}")
        same_sharding = m.order.get("assignment") == first.order.get("assignment")
        if m.order.get("count") != count or not same_sharding:
            problems.append(f"{shard.name} belongs to another sharding than {shards[0].name}")
    seen: dict[int, Shard] = {}
    for shard in shards:
        if shard.number in seen:
            twice = f"{seen[shard.number].output} and {shard.output}"
            problems.append(f"shard {shard.number}/{count} is given twice: {twice}")
        seen[shard.number] = shard
    missing = [n for n in range(int(count or 0)) if n not in seen]
    if missing:
        names = ", ".join(f"{n}/{count}" for n in missing)
        are = noun(len(missing), "is")
        problems.append(
            f"{noun(len(missing), 'shard')} {names} {are} missing (give every shard's output)"
        )
    for shard in shards:
        if shard.manifest.status != COMPLETE:
            m = shard.manifest
            problems.append(
                f"{shard.name} did not finish ({m.status}: {m.written} of {m.records} records): "
                f"--resume it first"
            )
    return problems


def _input_ids(path: Path) -> Iterator[tuple[str, str]]:
    """(line label, id label) of each record of the input, in order, for messages."""
    with path.open("rb") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record_id = json.loads(line).get("id")
            except (ValueError, AttributeError):
                record_id = None
            yield f"line {number}", (f"id {json.dumps(record_id)}" if record_id is not None else "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def merge(
    outputs: Sequence[Path], input_path: Path, output: Path, *, overwrite: bool = False
) -> MergeResult:
    """Merge the shard ``outputs`` of the sweep ``input_path`` into ``output``."""
    if not outputs:
        raise ConfigError("merge needs the shards' outputs")
    if output.exists() and output.stat().st_size and not overwrite:
        raise ConfigError(f"{output} exists: --overwrite replaces it")
    if any(os.path.realpath(o) == os.path.realpath(output) for o in [*outputs, input_path]):
        raise ConfigError(f"--output {output} is one of the files being merged")
    shards = [_load_shard(Path(o)) for o in outputs]
    problems = _check_together(shards, _sha256(input_path))
    if problems:
        raise ConfigError("cannot merge:\n  " + "\n  ".join(problems))
    total = shards[0].manifest.input_records
    temp = output.with_name(f".{output.name}.{os.getpid()}.merging")
    try:
        written = _write_merged(shards, input_path, total, temp)
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)
    _write_manifest(shards, output, written)
    return MergeResult(written, len(shards), output)


def _write_merged(shards: Sequence[Shard], input_path: Path, total: int, temp: Path) -> int:
    streams = [_lines(s) for s in shards]
    heads: list[tuple[int, int, bytes]] = []
    for number, stream in enumerate(streams):
        _advance(heads, number, stream)
    missing: list[str] = []
    duplicated: list[str] = []
    written = 0
    ids = _input_ids(input_path)
    with temp.open("wb") as out:
        for position in range(total):
            line_label, id_label = next(ids, ("", ""))
            label = f"{line_label} ({id_label})" if id_label else line_label
            found = []
            while heads and heads[0][0] == position:
                _, number, line = heapq.heappop(heads)
                found.append((number, line))
                _advance(heads, number, streams[number])
            if not found:
                missing.append(label)
                continue
            if len(found) > 1:
                names = " and ".join(shards[n].name for n, _ in found)
                duplicated.append(f"{label} in {names}")
            out.write(found[0][1])
            written += 1
        out.flush()
        os.fsync(out.fileno())
    if heads:
        duplicated.append(f"{plural(len(heads), 'record')} past the input's {total} records")
    if missing or duplicated:
        found = _named("missing", missing) + _named("in two shards", duplicated)
        raise ConfigError("cannot merge:\n  " + "\n  ".join(found))
    return written


def _advance(heads: list, number: int, stream: Iterator[tuple[int, bytes]]) -> None:
    item = next(stream, None)
    if item is not None:
        heapq.heappush(heads, (item[0], number, item[1]))


def _named(what: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = ", ".join(items[:NAMED])
    more = f" and {len(items) - NAMED} more" if len(items) > NAMED else ""
    return [f"{plural(len(items), 'record')} {what}: {shown}{more}"]


def _write_manifest(shards: Sequence[Shard], output: Path, written: int) -> None:
    """The merged output's own manifest: a complete output of the whole input."""
    first = shards[0].manifest
    groups = tuple({g.fingerprint: g for s in shards for g in s.manifest.groups}.values())
    merged = attrs.evolve(
        first,
        groups=groups,
        order={"all": first.input_records},  # as an unsharded run's: --resume finds it complete
        records=written,
    ).with_progress(COMPLETE, written, 0, sum(s.manifest.failed for s in shards))
    sidecar = sidecar_of(output)
    sidecar.mkdir(parents=True, exist_ok=True)
    write_manifest(sidecar / MANIFEST_FILE, merged)
