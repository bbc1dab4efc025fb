"""The GPU profile (issue 17): batch-1 decode against the HBM floor, and a mixed sweep against
transformers ``generate`` with its best static batch, in one run on one device.

* the floor: weight bytes read per decode step / the device's bandwidth, measured in the same
  run with a copy kernel (``Tensor.copy_`` of 1 GiB: read + write counted);
* batch 1: our torch backend, greedy, EOS ignored, on the GPT-2-small shape and a ~1B shape;
  decode time = (time for N tokens - time for 1 token) / (N - 1), so prefill is left out;
* the sweep: records of mixed prompt lengths and budgets, ours (continuous batching) against
  transformers ``LlamaForCausalLM.generate`` (SDPA, the same dtype) at each static batch size,
  the best one reported.

Every function takes ``device`` and ``dtype``, so ``scripts/gpu-check --dry`` runs the same
code on the CPU at a tiny scale (a check that the code runs, never a GPU figure).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import models

#: Shapes of the GPU profile: GPT-2 small, and about 1.1B parameters (Llama-like, 2048 wide).
GPU_SHAPES = {
    "gpt2-small": models.GPT2_SMALL,
    "1b": models.Shape("1b", n_embd=2048, n_layer=22, n_head=16, tokenizer_size=32000),
}
TARGET_FLOOR_SHARE = 0.70  # batch 1: at least this share of the HBM floor
TARGET_SWEEP_RATIO = 3.0  # sweep: at least this many times transformers' best static batch


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, run: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs, in seconds (the device synchronized around each)."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def copy_bandwidth(device: str, mib: int = 1024) -> float:
    """Bytes per second of a device-to-device copy (read + write of ``mib`` MiB)."""
    import torch

    source = torch.ones(mib << 18, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch
    seconds = timed(device, lambda: target.copy_(source), repeats=10)
    return 2 * source.nbytes / seconds


def batch1_decode(shape: models.Shape, device: str, dtype: str, new_tokens: int) -> dict:
    """Our greedy batch-1 decode on ``shape``: tokens/s of decode alone, and the weight bytes
    one step reads (for the floor)."""
    from gpt_simple import generate, load_for_inference

    folder = models.checkpoint(shape)
    model, tokenizer, _ = load_for_inference(folder, device=device, dtype=dtype)
    prompt = models.prompt_text(random.Random(0), 16, shape.tokenizer_size)

    def run(tokens: int) -> Callable[[], Any]:
        return lambda: generate(
            model, tokenizer, [prompt], max_new_tokens=tokens, do_sample=False, ignore_eos=True
        )

    run(new_tokens)()  # warm up (allocator, kernels, any graph capture)
    one, many = timed(device, run(1)), timed(device, run(new_tokens))
    step = (many - one) / (new_tokens - 1)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"shape": shape.name, "dtype": dtype, "tok_s": 1 / step, "weight_bytes": weights}


def sweep_records(count: int, tokenizer_size: int, seed: int = 0) -> list[dict]:
    """``count`` records of mixed prompt lengths (8..256 words) and budgets (16..128 tokens)."""
    rng = random.Random(seed)
    return [
        {
            "prompt": models.prompt_text(rng, rng.choice((8, 32, 64, 128, 256)), tokenizer_size),
            "max_new_tokens": rng.choice((16, 32, 64, 128)),
        }
        for _ in range(count)
    ]


def ours_sweep(shape: models.Shape, device: str, dtype: str, records: list[dict]) -> dict:
    """Our engine over the sweep (continuous batching, its own batch size): tokens/s."""
    from gpt_simple import generate_records, load_for_inference

    folder = models.checkpoint(shape)
    model, tokenizer, _ = load_for_inference(folder, device=device, dtype=dtype)
    by_budget: dict[int, list[str]] = {}
    for record in records:
        by_budget.setdefault(record["max_new_tokens"], []).append(record["prompt"])

    def run() -> None:
        for budget, prompts in by_budget.items():
            generate_records(
                model, tokenizer, prompts, max_new_tokens=budget, do_sample=False,
                ignore_eos=True,
            )  # fmt: skip

    seconds = timed(device, run, repeats=1)
    tokens = sum(r["max_new_tokens"] for r in records)
    return {"tok_s": tokens / seconds, "seconds": seconds, "tokens": tokens}


def transformers_sweep(
    shape: models.Shape, device: str, dtype: str, records: list[dict], batch_sizes: list[int]
) -> dict:
    """transformers ``generate`` (SDPA) in static batches sorted by prompt length, each batch
    generating its largest budget (as lm-eval-harness runs it): tokens/s of useful tokens at
    the best batch size."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    from benchmarks.workers.transformers_llama import convert_in_process

    folder = models.checkpoint(shape)
    hf_folder = models.WORK / "hf" / shape.name
    if not (hf_folder / "config.json").is_file():
        convert_in_process(folder, hf_folder)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = LlamaForCausalLM.from_pretrained(
        hf_folder, dtype=torch_dtype, attn_implementation="sdpa"
    )
    model = model.to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    encoded = sorted(
        ((tokenizer.encode(r["prompt"]).ids, r["max_new_tokens"]) for r in records),
        key=lambda item: -len(item[0]),
    )
    useful = sum(budget for _, budget in encoded)
    results = {}
    for size in batch_sizes:

        def run(size: int = size) -> None:
            for start in range(0, len(encoded), size):
                batch = encoded[start : start + size]
                width = max(len(ids) for ids, _ in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, (tokens, _) in enumerate(batch):  # left padding, as generate wants
                    ids[row, width - len(tokens) :] = torch.tensor(tokens)
                    mask[row, width - len(tokens) :] = 1
                with torch.inference_mode():
                    model.generate(
                        ids.to(device), attention_mask=mask.to(device), do_sample=False,
                        max_new_tokens=max(budget for _, budget in batch),
                    )  # fmt: skip

        results[size] = useful / timed(device, run, repeats=1)
    best = max(results, key=results.__getitem__)
    return {"tok_s": results[best], "best_batch": best, "by_batch": results}


def run_profile(device: str, dtype: str, *, tiny: bool = False) -> dict:
    """Every figure of the GPU profile, with its target (``tiny``: the dry mode's scale)."""
    shapes = {"tiny": models.TINY} if tiny else GPU_SHAPES
    bandwidth = copy_bandwidth(device, mib=16 if tiny else 1024)
    rows = []
    for name, shape in shapes.items():
        decode = batch1_decode(shape, device, dtype, new_tokens=8 if tiny else 128)
        floor = bandwidth / decode["weight_bytes"]
        share = decode["tok_s"] / floor
        rows.append({**decode, "name": name, "floor_tok_s": floor, "share_of_floor": share,
                     "target": TARGET_FLOOR_SHARE, "met": share >= TARGET_FLOOR_SHARE})  # fmt: skip
    shape = models.TINY if tiny else models.GPT2_SMALL
    records = sweep_records(16 if tiny else 2048, shape.tokenizer_size)
    ours = ours_sweep(shape, device, dtype, records)
    theirs = transformers_sweep(shape, device, dtype, records, [4] if tiny else [16, 64, 256])
    ratio = ours["tok_s"] / theirs["tok_s"]
    sweep = {"records": len(records), "ours": ours, "transformers": theirs, "ratio": ratio,
             "target": TARGET_SWEEP_RATIO, "met": ratio >= TARGET_SWEEP_RATIO}  # fmt: skip
    return {"device": device, "dtype": dtype, "copy_bytes_per_s": bandwidth, "batch1": rows,
            "sweep": sweep}  # fmt: skip


def markdown(report: dict) -> str:
    """The report as the Markdown table docs/performance.md takes."""
    lines = [
        f"GPU profile on {report.get('machine', report['device'])}, {report['dtype']}; copy "
        f"bandwidth {report['copy_bytes_per_s'] / 1e9:.0f} GB/s.",
        "",
        "| batch-1 decode | tok/s | floor tok/s | share | target |",
        "|---|---|---|---|---|",
    ]
    for row in report["batch1"]:
        lines.append(
            f"| {row['name']} | {row['tok_s']:.0f} | {row['floor_tok_s']:.0f} | "
            f"{row['share_of_floor']:.0%} | {'met' if row['met'] else 'missed'} "
            f"(>= {row['target']:.0%}) |"
        )
    sweep = report["sweep"]
    lines += [
        "",
        f"Sweep of {sweep['records']} records: ours {sweep['ours']['tok_s']:.0f} tok/s, "
        f"transformers best static batch ({sweep['transformers']['best_batch']}) "
        f"{sweep['transformers']['tok_s']:.0f} tok/s: {sweep['ratio']:.2f}x "
        f"({'met' if sweep['met'] else 'missed'}, target >= {sweep['target']:.1f}x).",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu-report.json", out / "gpu-report.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path
