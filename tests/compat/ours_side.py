"""Runs inside OUR virtualenv: the Python API side of the trainer comparison.

Usage: ``python ours_side.py REQUEST.json TRAINER_RESULT.json RESULT.json LOGITS.npz``.

For each run directory it loads the checkpoint with our ``gpt_simple.load_for_inference``
(fp32, CPU), completes the prompts greedily with ``gpt_simple.generate_records`` (the records
behind ``gpt_simple.generate``, so ``finish_reason`` and token counts come along), encodes the
prompts with our tokenizer, and computes our logits over exactly the id sequences the trainer
produced (prompt + its greedy continuation), so the logits comparison does not depend on the two
decodes agreeing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def _module_and_loaded(model, tokenizer):
    """Our ``nn.Module`` (what ``gpt_simple.load_for_inference`` returns, so
    ``model(input_ids=ids).logits`` works as in the trainer) and a backend model driving its
    KV-cached path. ``test_load_for_inference_returns_the_module`` checks the API shape; this
    accepts a wrapper too so the numerics are compared either way."""
    from gpt_simple_torch.plugin import TorchModel

    if isinstance(model, torch.nn.Module):
        return model, TorchModel.from_module(model, tokenizer)
    return model.module, model


def main(request_path: str, trainer_path: str, result_path: str, logits_path: str) -> None:
    import gpt_simple

    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    trainer = json.loads(Path(trainer_path).read_text(encoding="utf-8"))
    torch.set_num_threads(1)
    result = {"gpt_simple_file": gpt_simple.__file__, "runs": []}
    arrays: dict[str, np.ndarray] = {}
    for run_index, run_dir in enumerate(request["runs"]):
        model, tokenizer, _config = gpt_simple.load_for_inference(
            run_dir, dtype="fp32", device="cpu"
        )
        records = gpt_simple.generate_records(
            model,
            tokenizer,
            request["prompts"],
            do_sample=False,
            max_new_tokens=request["max_new_tokens"],
            repetition_penalty=1.0,
        )
        module, loaded = _module_and_loaded(model, tokenizer)
        for prompt_index, row in enumerate(trainer["runs"][run_index]["rows"]):
            sequence = row["prompt_ids"] + row["new_ids"]
            with torch.inference_mode():
                logits = module(input_ids=torch.tensor([sequence])).logits[0]
            arrays[f"{run_index}/{prompt_index}"] = logits.float().numpy()
            # The cached path generation really uses: prompt in one chunk, then one token per
            # call. Row `prompt_index` doubles as the cache slot; rows are independent.
            steps = [loaded.forward([prompt_index], [row["prompt_ids"]])[0]]
            steps += [loaded.forward([prompt_index], [[t]])[0] for t in row["new_ids"]]
            loaded.release([prompt_index])
            arrays[f"{run_index}/{prompt_index}/cached"] = np.stack(steps)
        result["runs"].append(
            {
                "run_dir": run_dir,
                "tokenizer_size": len(tokenizer),
                "eos_id": tokenizer.eos_token_id,
                "never_generate": list(tokenizer.never_generate),
                "prompt_ids": [tokenizer.encode(p) for p in request["prompts"]],
                "records": records,
                "model_type": f"{type(model).__module__}.{type(model).__qualname__}",
            }
        )
    np.savez(logits_path, **arrays)
    Path(result_path).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
