"""The competitor: ``transformers.LlamaForCausalLM.generate`` on our weights, run the way a
user would run it (torch's default threads and wait policy; static batches).

Commands (one JSON line out):

* ``convert CHECKPOINT OUT``: write a Hugging Face Llama folder holding the checkpoint's weights;
* ``single HF_FOLDER --prompt-tokens N --new-tokens M --repeats R``: greedy tokens/s, batch 1;
* ``sweep HF_FOLDER RECORDS --tokenizer FILE --batch-size B``: every record of a JSONL sweep,
  in static batches sorted by prompt length (longest first, as lm-eval-harness does), each
  batch generating up to its largest ``max_new_tokens``, sampling with the records'
  parameters.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.workers.common import best_of, emit


def convert(checkpoint: Path, out: Path) -> None:
    convert_in_process(checkpoint, out)
    emit({"converted": str(out)})


def convert_in_process(checkpoint: Path, out: Path) -> None:
    """Write a Hugging Face Llama folder holding ``checkpoint``'s weights into ``out``."""
    from safetensors.numpy import load_file

    from gpt_simple_lm_format.config import ModelConfig
    from tests.support.llama import llama_config_kwargs, llama_state_dict

    config = ModelConfig.from_file(checkpoint / "model" / "config.json")
    weights = load_file(str(checkpoint / "model" / "model.safetensors"))
    tensors = {k: torch.from_numpy(v) for k, v in llama_state_dict(config, weights).items()}
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**llama_config_kwargs(config)))
    model.load_state_dict(tensors, strict=True, assign=True)
    model.tie_weights()
    model.save_pretrained(out)


def load(folder: Path) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # ignore_eos: the random model must not stop early, so every tool does the same work
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def single(folder: Path, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    model = load(folder)
    ids = torch.arange(100, 100 + prompt_tokens)[None]

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        assert out.shape[1] == prompt_tokens + new_tokens

    run()  # warm-up
    seconds = best_of(repeats, run)
    emit({"tokens_per_s": new_tokens / seconds, "threads": torch.get_num_threads()})


def sweep(folder: Path, records_file: Path, tokenizer_file: Path, batch_size: int) -> None:
    from tokenizers import Tokenizer

    started = time.perf_counter()
    model = load(folder)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    records = [json.loads(line) for line in records_file.read_text().splitlines() if line]
    encoded = [tokenizer.encode(r["prompt"]).ids for r in records]
    order = sorted(range(len(records)), key=lambda i: -len(encoded[i]))
    generated = padded_steps = 0
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        longest = max(len(encoded[i]) for i in batch)
        ids = torch.zeros((len(batch), longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):  # left padding, as decoder-only generation needs
            ids[row, longest - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, longest - len(encoded[i]) :] = 1
        params = [records[i]["generation"] for i in batch]
        steps = max(p["max_new_tokens"] for p in params)
        torch.manual_seed(params[0]["seed"])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=steps,
                do_sample=True,
                temperature=params[0]["temperature"],
                top_k=params[0]["top_k"],
                top_p=params[0]["top_p"],
            )
        assert out.shape[1] == longest + steps
        generated += sum(p["max_new_tokens"] for p in params)  # what the records asked for
        padded_steps += steps * len(batch)
    emit(
        {
            "seconds_in_process": time.perf_counter() - started,
            "tokens": generated,
            "computed_tokens": padded_steps,
            "threads": torch.get_num_threads(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("out", type=Path)
    s = sub.add_parser("single")
    s.add_argument("folder", type=Path)
    s.add_argument("--prompt-tokens", type=int, default=32)
    s.add_argument("--new-tokens", type=int, default=128)
    s.add_argument("--repeats", type=int, default=3)
    w = sub.add_parser("sweep")
    w.add_argument("folder", type=Path)
    w.add_argument("records", type=Path)
    w.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json of the records")
    w.add_argument("--batch-size", type=int, required=True)
    args = parser.parse_args()
    if args.command == "convert":
        convert(args.checkpoint, args.out)
    elif args.command == "single":
        single(args.folder, args.prompt_tokens, args.new_tokens, args.repeats)
    else:
        sweep(args.folder, args.records, args.tokenizer, args.batch_size)


if __name__ == "__main__":
    main()
