"""What inspecting a checkpoint tells the planner, without loading its weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class CheckpointInfo:
    """A checkpoint a format plugin has claimed and checked (weights present, config valid).

    ``path`` is canonical (absolute, symlinks resolved), so two spellings of one checkpoint
    compare equal. ``selected_because`` explains the choice when the user pointed at a run
    directory. ``config`` is the format's model configuration as read; ``details`` holds other
    format-specific facts worth showing in the plan and ``meta`` (JSON-ready values).
    ``kv_values_per_token`` is how many values one token adds to a row's cache (keys and
    values of every layer; ``None``: unknown, or no cache): times the dtype's bytes, what a
    row costs, so the plan can say which records cannot fit in memory before loading.
    """

    format: str
    path: Path
    tokenizer: Path | None
    step: int | None = None
    selected_because: str | None = None
    weights: Path | None = None
    param_count: int | None = None
    context_length: int | None = None
    eos_id: int | None = None
    config: Mapping[str, Any] = attrs.field(factory=dict)
    warnings: tuple[str, ...] = ()
    details: Mapping[str, Any] = attrs.field(factory=dict)
    kv_values_per_token: int | None = None
