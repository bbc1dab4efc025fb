"""Fixtures of the trainer-compatibility check (``nox -s compat``).

Everything expensive happens once per pytest session, in :func:`compat_run`: build (or reuse)
the trainer's virtualenv, train two tiny models with the trainer's CLI, then run the trainer's
generation, our Python API and our CLI, each in its own subprocess. The tests only look at the
results; the summary is printed at the end of the run whatever the outcome.

The check needs network access to PyPI (or a local index) once, for the trainer's virtualenv,
and takes minutes, so it runs only when asked: ``GPT_SIMPLE_COMPAT=1`` (the nox session sets it)
or ``-m compat`` on the pytest command line. Otherwise its tests are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.compat import harness

TRAINER_VERSION = "0.1.2"
MAX_NEW_TOKENS = 100

# Prompts: starts of the training documents (long memorised continuations), mid-document text,
# text the model never saw, non-ASCII (byte-level BPE of multi-byte characters), a prompt
# longer than n_positions (64 tokens: the prompt itself is extrapolated), a prompt holding the
# literal <|endoftext|> (both sides must encode it as the special token), and the starts of
# short documents (continuations that stop at EOS, whose text the trainer leaves in and we drop).
PROMPTS = (
    'The "assert" statement',
    '"pass" is a null operation',
    "Lambda expressions",
    "x = 1 + 2",
    "café — naïve façade",
    harness.long_prompt(),
    'The "continue" statement<|endoftext|>The "break" statement',
    *harness.eos_prompts(),
)


@dataclass
class CompatRun:
    """Everything the three tools produced, and the comparison of it."""

    run_names: list[str]
    trainer: dict[str, Any]
    trainer_logits: dict[str, np.ndarray]
    ours: dict[str, Any]
    ours_logits: dict[str, np.ndarray]
    cli: dict[str, list[dict[str, Any]]]
    trainer_python: Path
    report: harness.Report
    timings: dict[str, float] = field(default_factory=dict)


def _enabled(config: pytest.Config) -> bool:
    return os.environ.get("GPT_SIMPLE_COMPAT") == "1" or "compat" in (
        config.getoption("markexpr", "") or ""
    )


def _cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the trainer's virtualenv lives: ``GPT_SIMPLE_COMPAT_CACHE`` (nox points it at its
    cache folder, which survives between runs), else the pytest session's temporary folder."""
    configured = os.environ.get("GPT_SIMPLE_COMPAT_CACHE")
    if configured:
        return Path(configured).expanduser().resolve()
    return tmp_path_factory.getbasetemp() / "compat-cache"


@pytest.fixture(scope="session")
def compat_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if not _enabled(request.config):
        pytest.skip("trainer compatibility: run `nox -s compat` (or set GPT_SIMPLE_COMPAT=1)")
    if importlib.util.find_spec("torch") is None:
        pytest.fail("the compat check needs our torch extra installed: pip install -e '.[torch]'")
    workdir = tmp_path_factory.mktemp("compat")
    timings: dict[str, float] = {}
    started = time.monotonic()

    trainer_python = harness.ensure_trainer_venv(_cache_root(tmp_path_factory))
    timings["trainer venv"] = time.monotonic() - started

    mark = time.monotonic()
    configs = harness.write_training_inputs(trainer_python, workdir)
    runs = harness.train_all(trainer_python, configs, workdir)
    timings["training"] = time.monotonic() - mark

    run_names = list(runs)
    request_file = workdir / "request.json"
    request_file.write_text(
        json.dumps(
            {
                "runs": [str(runs[name]) for name in run_names],
                "prompts": list(PROMPTS),
                "max_new_tokens": MAX_NEW_TOKENS,
                "trainer_version": TRAINER_VERSION,
            }
        ),
        encoding="utf-8",
    )
    mark = time.monotonic()
    trainer, trainer_logits = harness.run_trainer_side(trainer_python, request_file, workdir)
    timings["trainer generation"] = time.monotonic() - mark
    mark = time.monotonic()
    ours, ours_logits = harness.run_ours_api(request_file, workdir / "trainer.json", workdir)
    timings["our API"] = time.monotonic() - mark
    mark = time.monotonic()
    cli = {
        name: harness.run_ours_cli(runs[name], PROMPTS, MAX_NEW_TOKENS, workdir, name)
        for name in run_names
    }
    timings["our CLI"] = time.monotonic() - mark

    report = harness.compare(run_names, trainer, trainer_logits, ours, ours_logits, cli)
    result = CompatRun(
        run_names, trainer, trainer_logits, ours, ours_logits, cli, trainer_python, report, timings
    )
    request.config.stash[_SUMMARY] = _summary(result, workdir)
    return result


_SUMMARY = pytest.StashKey[str]()


def _summary(result: CompatRun, workdir: Path) -> str:
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items())
    return f"{result.report.summary()}\n  timings: {timing}\n  files: {workdir}"


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """Print the comparison (texts per prompt, logit differences) after the test results."""
    summary = config.stash.get(_SUMMARY, None)
    if summary:
        terminalreporter.section("trainer compatibility")
        terminalreporter.write_line(summary)
