"""The results table: printed, and saved under ``benchmarks/results/`` as markdown and JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.suite import Row

RESULTS = Path(__file__).resolve().parent / "results"


def _figure(row: Row) -> str:
    if row.value is None:
        return "-"
    value = f"{row.value:.3g}" if abs(row.value) < 100 else f"{row.value:.0f}"
    return f"{value} {row.unit}".strip()


def _met(row: Row) -> str:
    return {True: "yes", False: "**no**", None: ""}[row.met]


def render(rows: Sequence[Row], header: dict[str, Any]) -> str:
    """Markdown: a few lines on the machine and the run, then one table."""
    machine = header["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        f"# gpt-simple benchmark, profile `{header['profile']}`, {header['date']}",
        "",
        f"- machine: {machine['cpu']} ({', '.join(machine['cpu_features']) or 'no AVX2'}), "
        f"{machine['cpus_usable']} usable CPUs of {machine['cpus_online']}, "
        f"{machine['memory_gib']} GiB; {machine['os']}, Python {machine['python']}",
        f"- versions: {versions}; commit {machine['commit']}"
        + (" (with local changes)" if machine["dirty"] else ""),
        f"- threads: {header['threads']}",
        f"- background CPU load (other processes, in cores): {header['background_before']:.2f}"
        f" before the run, {header['background_mean']:.2f} on average during it; per row below",
        f"- total time {header['seconds'] / 60:.1f} min",
        "",
        "| scenario | what | figure | ratio | target | met | background |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x {row.ratio_label}" if row.ratio is not None else ""
        background = f"{row.background:.2f}" if row.background is not None else ""
        what = f"{row.what} ({row.note})" if row.note else row.what
        lines.append(
            f"| {row.scenario} | {what} | {_figure(row)} | {ratio} | {row.target} "
            f"| {_met(row)} | {background} |"
        )
    return "\n".join(lines) + "\n"


def save(rows: Sequence[Row], header: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``results/DATE-PROFILE.md`` and ``.json`` (a time suffix when the name is taken)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{header['date']}-{header['profile']}"
    if (RESULTS / f"{stem}.md").exists():
        stem += time.strftime("-%H%M")
    md, js = RESULTS / f"{stem}.md", RESULTS / f"{stem}.json"
    md.write_text(markdown, encoding="utf-8")
    data = {**header, "rows": [attrs.asdict(row) for row in rows]}
    js.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return md, js
