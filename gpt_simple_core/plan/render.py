"""The plan as text, for people."""

from __future__ import annotations

from pathlib import Path

from gpt_simple_core.plan.model import Plan, PlanGroup
from gpt_simple_core.settings import PYPROJECT_TABLE
from gpt_simple_core.wording import noun, plural


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _group_lines(number: int, group: PlanGroup) -> list[str]:
    step = f", step {group.step}" if group.step is not None else ""
    lines = [f"[{number}] {group.checkpoint} ({group.format}{step})"]
    if group.selected_because:
        lines.append(f"    picked: {group.selected_because}")
    backend = group.backend or "none"
    if group.backend_selected_because:
        backend += f" ({group.backend_selected_because})"
    lines.append(f"    backend: {backend}")
    quantized = f"; weights quantized to {group.quantize}" if group.quantize else ""
    lines.append(f"    dtype: {group.dtype}{quantized}; device: {group.device}")
    if group.options:
        shown = ", ".join(f"{k}={v!r}" for k, v in group.options.items())
        lines.append(f"    options: {shown}")
    eos = "none" if group.eos_id is None else str(group.eos_id)
    lines.append(f"    tokenizer: {group.tokenizer or 'none'} (EOS id {eos})")
    context = f"; context {group.context_length} tokens" if group.context_length else ""
    lines.append(
        f"    records: {group.records} (first on line {group.first_line}); "
        f"token budget {group.token_budget}; weights ~{human_bytes(group.weight_bytes)}{context}"
    )
    lines.extend(f"    note: {n}" for n in group.notes)
    lines.extend(f"    warning: {w}" for w in group.warnings)
    return lines


def _shard_lines(plan: Plan) -> list[str]:
    if not plan.shards:
        return []
    total = sum(s["cost"] for s in plan.shards) or 1
    lines = [f"Shards: {len(plan.shards)} (cost: weight bytes x (tokens + a load), estimated)"]
    for shard in plan.shards:
        share = 100 * shard["cost"] / total
        lines.append(
            f"  shard {shard['shard']}: {shard['records']} records, {shard['tokens']} tokens, "
            f"{share:.0f}% of the cost"
        )
        for group in shard["groups"]:
            part = f", part {group['part']} (the group is split)" if group["part"] else ""
            lines.append(
                f"    [{group['group']}] {group['checkpoint']}: {group['records']} records{part}"
            )
    return lines


def _config_lines(plan: Plan) -> list[str]:
    """The config files the settings came from: a ``pyproject.toml`` table changes results
    as much as a flag does, so the plan names it."""
    shown = [
        f"{name} [tool.{PYPROJECT_TABLE}]" if Path(name).name == "pyproject.toml" else name
        for name in plan.config_files
    ]
    if not shown:
        return []
    return [f"{noun(len(shown), 'config file')}: {', '.join(shown)}"]


def render_text(plan: Plan) -> str:
    """The plan, one block per group in load order, then problems if any."""
    budget = sum(g.token_budget for g in plan.groups)
    head = (
        f"Plan for {plan.input or 'input'}: {plural(plan.records, 'record')} in "
        f"{plural(len(plan.groups), 'group')} (one model load each), up to {budget} new tokens"
    )
    lines = [head, *_config_lines(plan)]
    for number, group in enumerate(plan.groups, 1):
        lines.extend(_group_lines(number, group))
    lines.extend(f"warning: {w}" for w in plan.warnings)
    lines.extend(_shard_lines(plan))
    if plan.problems:
        lines.append(f"{plural(len(plan.problems), 'problem')}:")
        lines.extend(f"  {p.render()}" for p in plan.problems)
    return "\n".join(lines) + "\n"
