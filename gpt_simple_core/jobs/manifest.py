"""The manifest of an output: which job wrote it, so a resumed run can prove it is the same job.

Written beside the output (``OUT.gpt-simple/manifest.json``) before the first record and again
when the run stops or ends. It records what makes the output what it is:

* the input: its sha256 and record count;
* the defaults that shape records (the config file and command line: model and generation
  blocks, backend options, device, context policy; not threads or batch sizes, which change
  speed only) and the run seed every unseeded record's seed derives from;
* each group: the resolved checkpoint (path, format, step, weights size and mtime), tokenizer,
  backend, dtype, quantization, device, options: its *fingerprint*;
* the records this output holds (``order``: all, or a shard's), the package version, and how
  far the run got (``status``: ``running``, ``stopped`` or ``complete``).

:func:`differences` names everything that changed between two manifests, for the refusal
message (or, with ``--resume=force``, for deciding which records run again).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import cattrs

from gpt_simple_core import __version__
from gpt_simple_core.plan.planned import PlannedGroup
from gpt_simple_core.records.source import InputDigest
from gpt_simple_core.settings import Settings

FORMAT = "gpt-simple-output"
FORMAT_VERSION = 1
RUNNING, STOPPED, COMPLETE = "running", "stopped", "complete"


@attrs.frozen(kw_only=True)
class GroupIdentity:
    """One model load as the output saw it; ``fingerprint`` covers every field."""

    checkpoint: str
    format: str
    step: int | None
    weights: str | None
    weights_size: int | None
    weights_mtime_ns: int | None
    tokenizer: str | None
    backend: str
    dtype: str
    device: str
    quantize: str | None = None
    context_overflow: str | None
    options: dict[str, Any] | None
    records: int

    @property
    def fingerprint(self) -> str:
        fields = attrs.asdict(self)
        del fields["records"]
        return json.dumps(fields, sort_keys=True, default=str)

    def describe(self) -> str:
        step = f", step {self.step}" if self.step is not None else ""
        return f"{self.checkpoint} ({self.format}{step}, {self.backend}, {self.dtype})"


@attrs.frozen(kw_only=True)
class Manifest:
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    gpt_simple: str = __version__
    input: str
    input_sha256: str
    input_records: int
    defaults: dict[str, Any]
    run_seed: int
    groups: tuple[GroupIdentity, ...]
    order: dict[str, Any]  # {"all": N} or a shard's {"shard": "I/N", "records": n, ...}
    records: int  # how many records this output holds when complete
    status: str = RUNNING
    written: int = 0
    spooled: int = 0
    failed: int = 0
    updated: str = ""

    def with_progress(self, status: str, written: int, spooled: int, failed: int) -> Manifest:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return attrs.evolve(
            self, status=status, written=written, spooled=spooled, failed=failed, updated=now
        )


_converter = cattrs.Converter()


def group_identity(group: PlannedGroup) -> GroupIdentity:
    info, request = group.info, group.request
    size = mtime = None
    if info.weights is not None:
        try:
            found = info.weights.stat()
            size, mtime = found.st_size, found.st_mtime_ns
        except OSError:
            pass
    return GroupIdentity(
        checkpoint=str(info.path),
        format=info.format,
        step=info.step,
        weights=str(info.weights) if info.weights else None,
        weights_size=size,
        weights_mtime_ns=mtime,
        tokenizer=str(info.tokenizer) if info.tokenizer else None,
        backend=group.backend.name,
        dtype=request.dtype,
        device=str(request.device),
        quantize=request.quantize,
        context_overflow=request.context_overflow,
        options=group.summary.options,
        records=len(group.records),
    )


def defaults_of(settings: Settings) -> dict[str, Any]:
    """The settings that shape records, as JSON (the run seed is kept apart)."""

    def block(spec: Any) -> dict[str, Any]:
        out = {}
        for field in attrs.fields(type(spec)):
            value = getattr(spec, field.name)
            if value is None or field.name == "seed":
                continue
            out[field.name] = value.values if hasattr(value, "values") else value
        return out

    return json.loads(
        json.dumps(
            {
                "model": block(settings.model),
                "generation": block(settings.generation),
                "backend_options": {k: v.values for k, v in settings.backend_options.items()},
                "device": settings.run.device,
                "context_overflow": settings.run.context_overflow,
            },
            default=list,
        )
    )


def build_manifest(
    *,
    digest: InputDigest,
    input_records: int,
    settings: Settings,
    run_seed: int,
    groups: Sequence[PlannedGroup],
    order: Mapping[str, Any],
    records: int,
) -> Manifest:
    return Manifest(
        input=digest.name,
        input_sha256=digest.sha256,
        input_records=input_records,
        defaults=defaults_of(settings),
        run_seed=run_seed,
        groups=tuple(group_identity(g) for g in groups),
        order=dict(order),
        records=records,
    )


def differences(old: Manifest, new: Manifest) -> list[str]:
    """What changed between the job that wrote an output and this one, for people."""
    changes = []
    if old.gpt_simple != new.gpt_simple:
        changes.append(f"it was written by gpt-simple {old.gpt_simple}; this is {new.gpt_simple}")
    if old.input_sha256 != new.input_sha256:
        changes.append(
            f"the input changed: {old.input_records} records, sha256 {old.input_sha256[:12]}... "
            f"then; {new.input_records} records, sha256 {new.input_sha256[:12]}... now"
        )
    if old.run_seed != new.run_seed:
        changes.append(f"the run seed changed: {old.run_seed} then, {new.run_seed} now")
    changes += [f"defaults: {c}" for c in _dict_changes(old.defaults, new.defaults)]
    if old.order != new.order:
        changes.append(f"the records it holds changed: {old.order} then, {new.order} now")
    changes += _group_changes(old.groups, new.groups)
    return changes


def _dict_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _dict_changes(a, b, f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key} was {json.dumps(a)}, now {json.dumps(b)}")
    return changes


def _group_changes(old: Sequence[GroupIdentity], new: Sequence[GroupIdentity]) -> list[str]:
    now = {g.fingerprint for g in new}
    then = {g.fingerprint for g in old}
    changes = []
    for group in old:
        if group.fingerprint in now:
            continue
        same_path = [
            g for g in new if g.checkpoint == group.checkpoint and g.fingerprint not in then
        ]
        if same_path and (same_path[0].weights_size, same_path[0].weights_mtime_ns) != (
            group.weights_size,
            group.weights_mtime_ns,
        ):
            changes.append(f"the weights of {group.checkpoint} changed (size or modification time)")
        elif same_path:
            changes.append(f"{group.describe()} now runs as {same_path[0].describe()}")
        else:
            changes.append(f"{group.describe()} is no longer in the plan")
    for group in new:
        if group.fingerprint not in then and not any(g.checkpoint == group.checkpoint for g in old):
            changes.append(f"{group.describe()} is new in the plan")
    return changes


def changed_groups(old: Manifest, new: Manifest) -> list[GroupIdentity]:
    """The old groups whose records cannot be kept: their fingerprint is gone."""
    now = {g.fingerprint for g in new.groups}
    return [g for g in old.groups if g.fingerprint not in now]


# Files ---------------------------------------------------------------------------------------
def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; ``None`` when there is none or it is not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            return None
        return _converter.structure(data, Manifest)
    except (OSError, ValueError, TypeError, KeyError, cattrs.BaseValidationError, AttributeError):
        return None


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Atomically: a crash leaves the old manifest or the new one, never half of one."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temp.open("w", encoding="utf-8") as f:
        json.dump(_converter.unstructure(manifest), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
