"""Runs INSIDE the trainer's virtualenv (``gpt-simple-lm==0.1.2``), never inside ours.

Both distributions provide the import package ``gpt_simple``, so this script must not import
anything from this repository: it reads a JSON request, drives the trainer's own public API and
writes what it saw, for ``test_trainer_compat.py`` to compare with our backend.

Usage: ``python trainer_side.py REQUEST.json RESULT.json LOGITS.npz``.

For each run directory and prompt it records:

- ``text``: ``gpt_simple.generate(..., do_sample=False, repetition_penalty=1.0)`` (the trainer's
  public API, decoded with ``skip_special_tokens=False`` as it does);
- ``prompt_ids`` and ``new_ids``: the same greedy decode through ``model.generate`` with the
  arguments ``gpt_simple.generate`` passes (the public API returns text only, and we need the ids
  to spot padding-band tokens, which decode to nothing);
- logits of the uncached forward over prompt + generated ids, every position (saved in the
  ``.npz`` under ``"<run index>/<prompt index>"``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(request_path: str, result_path: str, logits_path: str) -> None:
    import importlib.util
    from importlib.metadata import version

    import gpt_simple

    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    torch.set_num_threads(1)
    result = {
        "gpt_simple_file": gpt_simple.__file__,
        "trainer_version": version("gpt-simple-lm"),
        "torch_version": torch.__version__,
        "ours_importable": importlib.util.find_spec("gpt_simple_core") is not None,
        "runs": [],
    }
    # Whose gpt_simple is this? Ours would silently turn the comparison into ours vs ours.
    if result["trainer_version"] != request["trainer_version"]:
        sys.exit(f"expected gpt-simple-lm {request['trainer_version']}, got {result}")
    arrays: dict[str, np.ndarray] = {}
    for run_index, run_dir in enumerate(request["runs"]):
        model, tokenizer, config = gpt_simple.load_for_inference(
            run_dir, dtype="fp32", device="cpu"
        )
        texts = gpt_simple.generate(
            model,
            tokenizer,
            request["prompts"],
            do_sample=False,
            max_new_tokens=request["max_new_tokens"],
            repetition_penalty=1.0,
        )
        size = len(tokenizer.tokenizer)
        never = {tokenizer.pad_token_id, *range(size, config.vocab_size)}
        rows = []
        for prompt_index, (prompt, text) in enumerate(zip(request["prompts"], texts, strict=True)):
            ids = tokenizer.encode(prompt, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    max_new_tokens=request["max_new_tokens"],
                    temperature=1.0,
                    top_k=None,
                    top_p=None,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    repetition_penalty=1.0,
                )
                logits = model(input_ids=out, return_dict=True).logits[0]
            arrays[f"{run_index}/{prompt_index}"] = logits.float().numpy()
            new_ids = out[0, ids.shape[1] :].tolist()
            row = {
                "prompt": prompt,
                "text": text,
                "prompt_ids": ids[0].tolist(),
                "new_ids": new_ids,
            }
            first = next((i for i, t in enumerate(new_ids) if t in never), None)
            if first is not None:
                # Ours never generates these ids: the texts can only agree up to here.
                row["text_before_forbidden"] = tokenizer.decode(
                    new_ids[:first], skip_special_tokens=False
                )
            rows.append(row)
        result["runs"].append(
            {
                "run_dir": run_dir,
                "model_config": {k: getattr(config, k) for k in vars(config)},
                "tokenizer_size": size,
                "eos_id": tokenizer.eos_token_id,
                "pad_id": tokenizer.pad_token_id,
                "rows": rows,
            }
        )
    np.savez(logits_path, **arrays)
    Path(result_path).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
