"""The lm-evaluation-harness model ``gpt-simple`` (issue 15, item 4), through lm-eval itself:
a multiple-choice task and a generation task, defined here over local JSONL files (no hub,
no download), on the builtin model; lm-eval's scores equal a direct computation with our API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_simple import generate_records, load_for_inference, score
from tests.conftest import REPO_ROOT

QUESTIONS = [
    ("The assert statement is a convenient way to", [" insert debugging", " cook dinner"]),
    ("The try statement specifies", [" exception handlers", " the colour blue"]),
    ("for each item in the list the loop body is", [" executed once", " a banana"]),
    ("Objects are Python's abstraction for", [" data", " weather"]),
]
PROMPTS = ["The assert statement", "An exception is", "Objects are", "The try statement"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def builtin():
    model, tokenizer, _ = load_for_inference("builtin:default", device="cpu", dtype="fp32")
    return model, tokenizer


def write_tasks(folder: Path, builtin) -> dict[str, float]:
    """Two task YAMLs over local JSONL; returns the scores a direct computation expects."""
    model, tokenizer = builtin
    folder.mkdir(parents=True, exist_ok=True)
    mc = [{"question": q, "choices": [c.strip() for c in cs], "answer": 0} for q, cs in QUESTIONS]
    correct = 0
    for doc in mc:
        requests = [{"context": doc["question"], "continuation": " " + c} for c in doc["choices"]]
        lls = [r["score"]["logprob"] for r in score(model, tokenizer, requests)]
        correct += max(range(len(lls)), key=lls.__getitem__) == doc["answer"]
    greedy = generate_records(
        model, tokenizer, PROMPTS, max_new_tokens=8, do_sample=False, stop=["\n"], seed=0
    )
    # half the targets are the model's own greedy completion, half cannot be
    gen = [
        {"prompt": p, "target": r["completion"] if i % 2 == 0 else "no such completion"}
        for i, (p, r) in enumerate(zip(PROMPTS, greedy, strict=True))
    ]
    for name, docs in (("mc", mc), ("gen", gen)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "gs_mc.yaml").write_text(
        "task: gs_mc\n" + common
        + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        + "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        + "metric_list:\n  - metric: acc\n"
    )  # fmt: skip
    (folder / "gs_gen.yaml").write_text(
        "task: gs_gen\n" + common
        + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        + "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        + 'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        + "metric_list:\n  - metric: exact_match\n"
    )  # fmt: skip
    return {"gs_mc": correct / len(mc), "gs_gen": 0.5}


def test_lm_eval_scores_equal_our_direct_computation(tmp_path, builtin):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import gpt_simple.lm_eval  # noqa: F401 - registers "gpt-simple"

    expected = write_tasks(tmp_path / "tasks", builtin)
    results = simple_evaluate(
        model="gpt-simple",
        model_args="checkpoint=builtin:default,dtype=fp32,backend=torch,device=cpu",
        tasks=["gs_mc", "gs_gen"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        batch_size=4,
    )["results"]
    assert results["gs_mc"]["acc,none"] == pytest.approx(expected["gs_mc"])
    assert results["gs_gen"]["exact_match,none"] == pytest.approx(expected["gs_gen"])


def test_loglikelihood_rolling_is_our_rolling_score(builtin):
    from lm_eval.api.instance import Instance

    from gpt_simple.lm_eval import GptSimpleLM

    lm = GptSimpleLM(checkpoint="builtin:default", dtype="fp32", device="cpu")
    text = "The try statement specifies exception handlers and cleanup code. " * 40
    request = Instance("loglikelihood_rolling", {}, (text,), 0)
    (ll,) = lm.loglikelihood_rolling([request])
    (ours,) = score(*builtin, [{"text": text}])
    assert ours["score"]["windows"] > 1 and ll == pytest.approx(ours["score"]["logprob"])


def test_the_command_line_knows_gpt_simple(tmp_path, builtin):
    write_tasks(tmp_path / "tasks", builtin)
    result = subprocess.run(
        [sys.executable, "-m", "gpt_simple.lm_eval", "run", "--model", "gpt-simple",
         "--model_args", "checkpoint=builtin:default,dtype=fp32", "--device", "cpu",
         "--tasks", "gs_mc", "--include_path", str(tmp_path / "tasks"),
         "--output_path", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
             "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gs_mc" in result.stdout and "acc" in result.stdout
