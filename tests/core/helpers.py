"""Small helpers shared by the core tests: JSONL files, the CLI in-process and in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as HF
from tokenizers import models, pre_tokenizers

from gpt_simple_core.cli.main import main
from gpt_simple_core.hookspecs import hookimpl
from gpt_simple_core.plugin_manager import get_plugin_manager
from gpt_simple_core.protocol import AUTO, Backend
from gpt_simple_core.records.schema import GenerationParams

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    """One line per item: dicts are dumped, strings are written as they are."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``gpt-simple ARGV`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_batch(
    capsys: pytest.CaptureFixture[str], folder: Path, records: Iterable[dict | str], *flags: str
) -> tuple[int, list[dict[str, Any]], str]:
    """``batch-generate`` over ``records`` in this process, output to a file:
    (exit status, output records, stderr). Nothing may reach stdout."""
    source = write_jsonl(folder / "in.jsonl", records)
    output = folder / "out.jsonl"
    output.unlink(missing_ok=True)
    code, out, err = cli(
        capsys, "batch-generate", "--input", str(source), "--output", str(output), *flags
    )
    assert out == ""
    return code, (read_jsonl(output) if output.exists() else []), err


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess CLI run: this checkout importable, no entry points."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "backends")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        GPT_SIMPLE_PLUGINS="",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def toy_cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.toy_cli", *argv]


def run_toy_cli(
    argv: Sequence[str], *, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """``gpt-simple ARGV`` with the toy backend, in a subprocess."""
    return subprocess.run(
        toy_cli_command(*argv),
        cwd=cwd,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class PlanOnlyBackend(Backend):
    """Claims gpt-simple checkpoints for planning; loading is not its business."""

    name = "plan-only"
    formats = {"gpt-simple": AUTO}
    dtypes = ("fp32", "fp16", "bf16")
    devices = ("cpu",)

    def load(self, checkpoint: Any, request: Any) -> Any:
        raise RuntimeError("plan-only backend cannot load")


class _BackendsPlugin:
    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = backends

    @hookimpl
    def gpt_simple_register_backends(self, register: Any) -> None:
        for backend in self.backends:
            register(backend)


def register_backends(*backends: Backend, name: str = "test-backends") -> None:
    """Register backend instances as a plugin of the current plugin manager."""
    get_plugin_manager().register(_BackendsPlugin(backends), name=name)


def generation_params(**overrides: Any) -> GenerationParams:
    """Resolved sampling parameters: plain sampling (no top-k/top-p/min-p), seed 0."""
    values = {
        "max_new_tokens": 10,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "greedy": False,
        "repetition_penalty": 1.0,
        "seed": 0,
        "return_full_text": False,
        "stop": (),
        "stop_token_ids": (),
        "ignore_eos": False,
    }
    values.update(overrides)
    return GenerationParams(**values)


def word_tokenizer(folder: Path, words: list[str], special: list[str], **side_files) -> Path:
    """A word-level tokenizer with ``special`` added as special tokens, plus side files."""
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tokenizer = HF(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(special)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    for name, content in side_files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return folder
