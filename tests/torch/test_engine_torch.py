"""The PyTorch backend driven by the core's engine: batch invariance, and the CLI end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_simple_core.records.schema import GenerationParams
from gpt_simple_lm_format.tokenizer import HFTokenizer
from gpt_simple_torch.plugin import TorchModel
from tests.support.checkpoints import TRAINING_TEXT, small_config, write_run_dir, write_tokenizer
from tests.support.cli import subprocess_env, write_jsonl
from tests.support.near_ties import explain_divergence, planned, run_tokens
from tests.torch.helpers import build_gpt

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TorchModel:
    folder = tmp_path_factory.mktemp("tok")
    size = write_tokenizer(folder)
    module, _ = build_gpt(small_config(size, n_kv_head=2))
    return TorchModel.from_module(module, HFTokenizer(folder))


def _prompts(n: int) -> list[str]:
    words = TRAINING_TEXT.split()
    return [" ".join(words[(7 * i) % 40 : (7 * i) % 40 + 2 + i % 9]) for i in range(n)]


def _params(greedy: bool, i: int) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=12 + i % 5, temperature=0.9, top_k=20, top_p=0.9, min_p=0.0,
        greedy=greedy, repetition_penalty=1.0, seed=1000 + i, return_full_text=False,
        stop=(), stop_token_ids=(), ignore_eos=True,
    )  # fmt: skip


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "seeded-sampling"])
def test_alone_or_in_a_batch_of_32_gives_the_same_tokens(model: TorchModel, greedy: bool):
    prompts = _prompts(32)
    records = planned(prompts, [_params(greedy, i) for i in range(32)])
    alone = run_tokens(model, records, batch_size=1)
    batched = run_tokens(model, records, batch_size=32)
    notes = []
    for r in records:
        note = explain_divergence(
            model, model.tokenizer.encode(r.record.prompt), r.params,
            alone[r.record.index], batched[r.record.index],
        )  # fmt: skip
        if note:
            notes.append(f"record {r.record.index}: {note}")
    print("\n".join(notes) or "no divergence")
    assert len(notes) <= 2, notes  # a near-tie is rare; many would hide a real bug


def test_neighbours_do_not_change_a_seeded_sample(model: TorchModel):
    prompts = _prompts(12)
    records = planned(prompts, [_params(False, i) for i in range(12)])
    full = run_tokens(model, records, batch_size=5)
    every_other = run_tokens(model, records[::2], batch_size=3)
    for r in records[::2]:
        i = r.record.index
        explain_divergence(model, model.tokenizer.encode(r.record.prompt), r.params,
                           full[i], every_other[i])  # fmt: skip


def _installed_cli() -> list[str]:
    """The installed console script when there is one (the nox session), else the module."""
    script = shutil.which("gpt-simple", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gpt_simple_core.cli.main"]


def test_generate_runs_the_embedded_model(tmp_path: Path):
    """The README's first command: no checkpoint of one's own, real output on stdout."""
    result = subprocess.run(
        [*_installed_cli(), "generate", "--prompt", "The try statement",
         "--max-new-tokens", "40", "--greedy"],
        cwd=tmp_path, env=subprocess_env(GPT_SIMPLE_PLUGINS="torch"), capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (output,) = (json.loads(line) for line in result.stdout.splitlines())
    assert output["meta"]["checkpoint"].endswith("builtin_models/default")
    assert output["meta"]["backend"] == "torch"
    assert len(output["completion"]) > 40
    assert "use the embedded one" in result.stderr


def test_batch_mixing_builtin_and_a_run_dir_loads_each_once(tmp_path: Path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-10": 10, "checkpoint-20": 20})
    run_relative, builtin = {"output_dir": "run"}, {"checkpoint": "builtin:default"}
    models = [builtin, run_relative, {"checkpoint": str(run)}, builtin, run_relative]
    records = [
        {"id": i, "prompt": "The assert statement", "model": m,
         "generation": {"greedy": True, "max_new_tokens": 4}}
        for i, m in enumerate(models)
    ]  # fmt: skip
    source = write_jsonl(tmp_path / "in.jsonl", records)
    result = subprocess.run(
        [*_installed_cli(), "--log-format", "json", "batch-generate", "--input", str(source)],
        cwd=tmp_path, env=subprocess_env(GPT_SIMPLE_PLUGINS="torch"), capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in outputs] == list(range(5))
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    loads = [e["checkpoint"] for e in events if e.get("event") == "loading"]
    assert len(loads) == 2, loads
    assert loads[1] == str(run / "checkpoints" / "checkpoint-20")
    assert {o["meta"]["step"] for o in outputs if o["id"] in (1, 2, 4)} == {20}
