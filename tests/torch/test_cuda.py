"""The torch backend on CUDA (issue 17): greedy text equal to the CPU fp32 run (fp32 exactly,
bf16/fp16 up to their first divergence, reported), batched decode with padding equal to each
prompt alone, seeds reproducible, ``auto`` picking bf16 on CUDA.

Marked ``cuda``: collected everywhere, skipped with the reason on machines without a GPU, run
by ``scripts/gpu-check`` on one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt_simple import generate, load_for_inference
from tests.support.checkpoints import (
    PEAKED_SCALE,
    random_state_dict,
    small_config,
    write_checkpoint,
    write_tokenizer,
)

pytestmark = [
    pytest.mark.torch,
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)"),
]

PROMPTS = [
    "The assert statement",
    "for each item in the list the loop body",
    "An exception is raised when an error is detected; it can be handled by",
    "Objects",
]
NEW_TOKENS = 24
#: Tokens bf16 and fp16 must agree with fp32 for, at least, on these small peaked models.
AGREE_AT_LEAST = {"bf16": 4, "fp16": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cuda") / "c"
    size = write_tokenizer(folder / "tokenizer")
    config = small_config(size)
    return write_checkpoint(folder, config, weights=random_state_dict(config, 0, PEAKED_SCALE))


def greedy(checkpoint: Path, device: str, dtype: str, prompts=PROMPTS, **options) -> list[str]:
    model, tokenizer, _ = load_for_inference(checkpoint, device=device, dtype=dtype)
    return generate(
        model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, do_sample=False, **options
    )


@pytest.fixture(scope="module")
def cpu_reference(checkpoint: Path) -> list[str]:
    return greedy(checkpoint, "cpu", "fp32")


def first_divergence(a: str, b: str) -> int:
    """Characters the two texts share from the start."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_fp32_on_cuda_is_the_cpu_text(checkpoint, cpu_reference):
    assert greedy(checkpoint, "cuda", "fp32") == cpu_reference


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_agrees_with_fp32_until_it_diverges(checkpoint, cpu_reference, dtype):
    texts = greedy(checkpoint, "cuda", dtype)
    _, tokenizer, _ = load_for_inference(checkpoint, device="cpu", dtype="fp32")
    for ours, reference in zip(texts, cpu_reference, strict=True):
        shared = tokenizer.encode(reference[: first_divergence(ours, reference)])
        print(f"{dtype}: {len(shared)} tokens equal to fp32 of {NEW_TOKENS}")  # the report
        assert len(shared) >= AGREE_AT_LEAST[dtype] or ours == reference


def test_batched_decode_with_padding_equals_each_prompt_alone(checkpoint):
    together = greedy(checkpoint, "cuda", "fp32", batch_size=len(PROMPTS))
    alone = [greedy(checkpoint, "cuda", "fp32", prompts=[p])[0] for p in PROMPTS]
    assert together == alone


def test_seeded_sampling_is_reproducible_on_cuda(checkpoint):
    model, tokenizer, _ = load_for_inference(checkpoint, device="cuda", dtype="fp32")
    runs = [
        generate(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, seed=7, temperature=0.9)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_auto_dtype_is_bf16_on_cuda(checkpoint):
    model, _, _ = load_for_inference(checkpoint, device="cuda")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).device.type == "cuda"
