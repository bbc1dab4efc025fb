"""The plugin template, installed like a third party would: into a fresh virtualenv, next to
gpt-simple, then listed by ``gpt-simple backends`` and used by a record."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.plugin_template.conftest import run as _run

TEXT = "the cat sat on the mat. the dog sat on the log. " * 20


def test_template_is_listed_by_backends(venv: Path) -> None:
    result = _run(venv / "bin" / "gpt-simple", "backends", "--json")
    assert result.returncode == 0, result.stderr
    listed = {b["name"]: b for b in json.loads(result.stdout)["backends"]}
    assert listed["bigram"]["package"] == "gpt-simple-bigram"
    assert listed["bigram"]["version"] == "0.1.0"
    assert listed["bigram"]["formats"] == {"bigram": "auto"}
    assert listed["bigram"]["dependencies"] == "ok"


def test_template_uses_only_the_public_plugin_api() -> None:
    source = REPO_ROOT / "plugins" / "gpt-simple-bigram" / "src" / "gpt_simple_bigram"
    for module in source.glob("*.py"):
        text = module.read_text(encoding="utf-8")
        assert "gpt_simple_core" not in text, f"{module.name} imports core internals"


def test_template_runs_a_record(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    trained = _run(
        venv / "bin" / "python",
        "-m",
        "gpt_simple_bigram.train",
        "corpus.txt",
        "model",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    records = [
        {
            "id": i,
            "prompt": "the ",
            "model": {"checkpoint": "model"},
            "generation": {"max_new_tokens": 12, "seed": i},
        }
        for i in range(3)
    ] + [
        {
            "id": "greedy",
            "prompt": "the d",
            "model": {"checkpoint": "model"},
            "generation": {"greedy": True, "max_new_tokens": 5},
        }
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = _run(
        venv / "bin" / "gpt-simple", "batch-generate", "--input", "in.jsonl", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in outputs] == [0, 1, 2, "greedy"]
    assert all(o["meta"]["backend"] == "bigram" for o in outputs)
    assert all(set(o["completion"]) <= set(TEXT) for o in outputs)
    assert all(0 < len(o["completion"]) <= 12 for o in outputs)
    assert outputs[-1]["completion"] == _greedy_chain("d", 5)


def _greedy_chain(start: str, steps: int) -> str:
    """Greedy decoding by hand: the most frequent successor, ties to the earliest character
    in sorted order (the lowest id)."""
    pairs = Counter(itertools.pairwise(TEXT))
    out, current = "", start
    for _ in range(steps):
        successors = sorted(set(TEXT), key=lambda c: (-pairs[(current, c)], c))
        current = successors[0]
        out += current
    return out
