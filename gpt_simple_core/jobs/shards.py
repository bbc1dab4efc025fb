"""Sharding a sweep across a job array, by model: every node computes the same assignment.

The assignment is computed from the plan, never from line numbers alone: whole groups (one
model load each: checkpoint, dtype, tokenizer, backend) go to one shard, balanced by their
estimated cost, so no checkpoint loads twice. A group is split across shards only when it
alone costs more than a shard's fair share (``total / N``) and its decoding, not its load,
dominates its cost: into as few contiguous parts as fit a fair share each; each part pays its
own load, and the plan says so.

Cost model (docs/scaling-out.md): decoding on the CPU and the GPU alike is bound by reading
the weights, once per step, so a group costs about
``weight_bytes x (token_budget + LOAD_TOKENS)``: its weights times the tokens it generates,
plus a load, counted as :data:`LOAD_TOKENS` tokens' worth of weight reads.

Units are placed largest first, each on the least loaded shard (ties: the lowest shard), in an
order that depends only on the plan (groups in first-appearance order, resolved paths): the
same input gives the same assignment on every node, whatever its hash seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence

import attrs

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.plan.planned import Planned, PlannedGroup

#: A model load, in tokens' worth of weight reads (a load reads the weights a few times over,
#: plus fixed costs: process start, tokenizer, cache allocation).
LOAD_TOKENS = 256
AUTO = "auto"


@attrs.frozen
class ShardSpec:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> ShardSpec:
    """``I/N``, or ``auto``: a Slurm array task (``SLURM_ARRAY_TASK_ID`` less
    ``SLURM_ARRAY_TASK_MIN``, of ``SLURM_ARRAY_TASK_COUNT``) or a Kubernetes Indexed Job
    (``JOB_COMPLETION_INDEX``, of ``GPT_SIMPLE_SHARD_COUNT``: set it to the job's
    ``completions``)."""
    env = os.environ if environ is None else environ
    if text == AUTO:
        return _from_environment(env)
    index, slash, count = text.partition("/")
    if not slash or not index.isdigit() or not count.isdigit():
        raise ConfigError(f"--shard must be I/N (0-based: 0/4 .. 3/4) or auto, got {text!r}")
    return _checked(int(index), int(count))


def _from_environment(env: Mapping[str, str]) -> ShardSpec:
    if "SLURM_ARRAY_TASK_ID" in env:
        if "SLURM_ARRAY_TASK_COUNT" not in env:
            raise ConfigError(
                "--shard auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT"
            )
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        index = int(env["SLURM_ARRAY_TASK_ID"]) - first
        return _checked(index, int(env["SLURM_ARRAY_TASK_COUNT"]), "the Slurm array")
    if "JOB_COMPLETION_INDEX" in env:
        if "GPT_SIMPLE_SHARD_COUNT" not in env:
            raise ConfigError(
                "--shard auto in a Kubernetes Indexed Job needs GPT_SIMPLE_SHARD_COUNT (set it "
                "to the job's completions)"
            )
        index = int(env["JOB_COMPLETION_INDEX"])
        return _checked(index, int(env["GPT_SIMPLE_SHARD_COUNT"]), "the Indexed Job")
    raise ConfigError(
        "--shard auto found neither a Slurm array task (SLURM_ARRAY_TASK_ID) nor a Kubernetes "
        "Indexed Job (JOB_COMPLETION_INDEX); give --shard I/N"
    )


def _checked(index: int, count: int, where: str = "--shard") -> ShardSpec:
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"{where}: shard {index} of {count} does not exist (0 <= I < N)")
    return ShardSpec(index, count)


@attrs.frozen
class Unit:
    """Part ``part`` of ``parts`` of plan group ``group`` (0-based, plan order)."""

    group: int
    part: int
    parts: int
    indexes: tuple[int, ...]
    tokens: int
    cost: float


@attrs.frozen
class Assignment:
    count: int
    shards: tuple[tuple[Unit, ...], ...]

    def indexes(self, shard: int) -> list[int]:
        """The input positions shard ``shard`` runs, ascending (its output's order)."""
        return sorted(i for unit in self.shards[shard] for i in unit.indexes)

    def cost(self, shard: int) -> float:
        return sum(unit.cost for unit in self.shards[shard])

    @property
    def split_groups(self) -> list[int]:
        return sorted({u.group for shard in self.shards for u in shard if u.parts > 1})

    @property
    def fingerprint(self) -> str:
        """A digest of who runs what: every shard's manifest carries it, and merge compares."""
        canonical = [[(u.group, u.part, list(u.indexes)) for u in s] for s in self.shards]
        return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()

    def summary(self, planned: Planned) -> list[dict]:
        """Per shard: its groups (checkpoint, part), records, tokens and estimated cost."""
        out = []
        for number, units in enumerate(self.shards):
            out.append(
                {
                    "shard": f"{number}/{self.count}",
                    "records": sum(len(u.indexes) for u in units),
                    "tokens": sum(u.tokens for u in units),
                    "cost": round(self.cost(number)),
                    "groups": [
                        {
                            "group": u.group + 1,
                            "checkpoint": planned.groups[u.group].summary.checkpoint,
                            "part": f"{u.part + 1}/{u.parts}" if u.parts > 1 else None,
                            "records": len(u.indexes),
                        }
                        for u in sorted(units, key=lambda u: (u.group, u.part))
                    ],
                }
            )
        return out


def _weight(group: PlannedGroup) -> int:
    known = group.summary.weight_bytes or (group.info.param_count or 0) * 4
    return max(1, known)


def _tokens(group: PlannedGroup) -> int:
    return sum(r.max_new_tokens for r in group.records)


def _units(group_number: int, group: PlannedGroup, fair: float, count: int) -> list[Unit]:
    records = sorted(group.records, key=lambda r: r.record.index)
    weight = _weight(group)
    tokens = sum(r.max_new_tokens for r in records)
    parts = _parts(weight, tokens, fair, min(count, len(records)))
    chunks = _balanced_chunks([r.max_new_tokens for r in records], parts)
    units = []
    for part, (start, end) in enumerate(chunks):
        chunk_tokens = sum(r.max_new_tokens for r in records[start:end])
        units.append(
            Unit(
                group=group_number,
                part=part,
                parts=len(chunks),
                indexes=tuple(r.record.index for r in records[start:end]),
                tokens=chunk_tokens,
                cost=weight * (chunk_tokens + LOAD_TOKENS),
            )
        )
    return units


def _parts(weight: int, tokens: int, fair: float, most: int) -> int:
    """How many parts a group is split into: 1 unless it alone costs more than a fair share
    and decoding, not loading, dominates it (each part loads the model again); then the
    fewest parts that each fit in a fair share, at most ``most``."""
    if most <= 1 or weight * (tokens + LOAD_TOKENS) <= fair or tokens <= LOAD_TOKENS:
        return 1
    room = fair / weight - LOAD_TOKENS  # tokens one part may generate within a fair share
    return most if room <= 0 else min(most, max(2, math.ceil(tokens / room)))


def _balanced_chunks(tokens: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, non-empty [start, end) ranges of about equal token sums."""
    total = sum(tokens)
    bounds, start, running = [], 0, 0
    for position, value in enumerate(tokens):
        running += value
        remaining_parts = parts - len(bounds) - 1
        remaining_items = len(tokens) - position - 1
        target = total * (len(bounds) + 1) / parts
        if remaining_parts > 0 and (running >= target or remaining_items == remaining_parts):
            bounds.append((start, position + 1))
            start = position + 1
    bounds.append((start, len(tokens)))
    return [b for b in bounds if b[1] > b[0]]


def assign(planned: Planned, count: int) -> Assignment:
    """Who runs what, for ``count`` shards (see the module docstring)."""
    costs = [
        _weight(g) * (sum(r.max_new_tokens for r in g.records) + LOAD_TOKENS)
        for g in planned.groups
    ]
    fair = sum(costs) / count
    units = [u for n, g in enumerate(planned.groups) for u in _units(n, g, fair, count)]
    units.sort(key=lambda u: (-u.cost, u.group, u.part))
    loads = [0.0] * count
    shards: list[list[Unit]] = [[] for _ in range(count)]
    for unit in units:
        target = min(range(count), key=lambda s: (loads[s], s))
        shards[target].append(unit)
        loads[target] += unit.cost
    return Assignment(count, tuple(tuple(s) for s in shards))


def shard_plan(planned: Planned, indexes: Sequence[int]) -> Planned:
    """``planned`` with only the records at ``indexes`` (a shard's), groups left empty
    dropped; the plan summary keeps the input's record count."""
    wanted = set(indexes)
    groups = []
    for group in planned.groups:
        records = [r for r in group.records if r.record.index in wanted]
        if records:
            groups.append(attrs.evolve(group, records=records))
    return attrs.evolve(planned, groups=groups)
