"""The llama.cpp peer: our benchmark weights as GGUF (``benchmarks/gguf_export.py``), run
through ``llama-cpp-python``'s low-level binding, in its own process.

The low-level API (``llama_decode`` over a ``llama_batch``) rather than the ``Llama`` class:
the GGUF files carry no vocabulary (the benchmark feeds token ids), and the batch API is the
one that puts several sequences into one decode, as llama.cpp's own ``llama-parallel`` and
``llama-server`` do. Every run uses ``n_threads`` = ``n_threads_batch`` = the CPUs this process
may use, and an F32 KV cache (the precision our backends keep; llama.cpp's default is F16).
Nothing ever stops at an end-of-sequence token (the files have none): every sequence
generates exactly the tokens asked for, as ``ignore_eos`` does for the other tools.

Commands (one JSON line out):

* ``single CHECKPOINT --variant f32|q8_0|q4_0``: greedy tokens/s at batch 1 on the same
  32-token prompt and 128 new tokens as ``gpt_simple_api single`` (argmax of the logits);
* ``sweep CHECKPOINT RECORDS --parallel N``: every record of a JSONL sweep with continuous
  batching over N sequence slots (a finished record's slot takes the next record at once;
  prompts are prefilled in the same decode as the other slots' next tokens), sampling with
  the records' parameters through llama.cpp's sampler chain (top-k, top-p, temperature,
  seeded);
* ``check CHECKPOINT``: F32 logits against our torch backend's (``reference``, run in its
  own process) after the prompt and over 32 greedy steps: the max absolute difference and
  whether the greedy tokens agree. Run it before trusting any timing.

The checkpoint is converted on first use (cached under ``benchmarks/work/gguf/``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gguf_export import VARIANTS, export
from benchmarks.workers.common import best_of, emit
from benchmarks.workers.gpt_simple_api import NEW_TOKENS, benchmark_prompt

INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary llama-cpp-python '
    "llama-cpp-python==0.3.36 gguf==0.19.0 (builds llama.cpp from source, ~7 min on 2 cores; "
    "see benchmarks/README.md)"
)
#: llama.cpp's flash-attention switch. Off by default here: its CPU kernel computes attention
#: in F16 (max |dlogit| ~2e-3 on the mid model, against ~3e-6 with it off), and the F32 rows
#: compare fp32 engines; ``auto`` (on, on a CPU) is what llama.cpp does unless told.
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
#: Within this max |logit difference| llama.cpp F32 computes what our torch backend does.
CHECK_TOLERANCE = 1e-3


def threads() -> int:
    """The CPUs this process may use (affinity and cgroup quota), as our backends count them."""
    from gpt_simple_core.cpus import usable_cpus

    return usable_cpus()


def prompt_ids(checkpoint: Path) -> list[int]:
    """The benchmark prompt through the checkpoint's own tokenizer: the ids every tool gets."""
    return token_ids(checkpoint, [benchmark_prompt()])[0]


def token_ids(checkpoint: Path, texts: Sequence[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer" / "tokenizer.json"))
    return [encoding.ids for encoding in tokenizer.encode_batch(list(texts))]


def quiet_logs() -> None:
    """Only llama.cpp's warnings and errors reach stderr (the suite's log): its info lines
    (every tensor, every graph input) run to hundreds per load."""
    import ctypes

    import llama_cpp as lc

    state = {"shown": False}

    @lc.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous message
            state["shown"] = level in (3, 4)  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
        if state["shown"]:
            sys.stderr.write(text.decode("utf-8", "replace"))

    _KEEP.append(callback)  # ctypes must not collect it while llama.cpp holds the pointer
    lc.llama_log_set(callback, ctypes.c_void_p(0))


_KEEP: list[Any] = []


class Engine:
    """One llama.cpp model and context: ``slots`` sequences of up to ``length`` tokens each,
    at most ``batch`` tokens per decode."""

    def __init__(
        self, gguf: Path, *, slots: int, length: int, batch: int, flash_attn: str = "off"
    ) -> None:
        import llama_cpp as lc

        self.lc = lc
        self.version = str(getattr(lc, "__version__", "?"))
        quiet_logs()
        lc.llama_backend_init()
        self.threads = threads()
        model_params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = lc.llama_context_default_params()
        params.n_ctx = slots * length
        params.n_batch = batch
        params.n_ubatch = min(batch, 512)
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = self.threads
        params.type_k = params.type_v = lc.GGML_TYPE_F32
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        # one KV buffer shared by all sequences, as llama-server sets it when it picks the
        # slots (one stream per sequence was no faster on this sweep)
        params.kv_unified = True
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.memory = lc.llama_get_memory(self.ctx)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.capacity = batch
        self.batch = lc.llama_batch_init(batch, 0, 1)
        self.n_tokens = 0

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Queue one token of sequence ``seq`` for the next decode; its batch index."""
        i = self.n_tokens
        if i >= self.capacity:
            raise RuntimeError(f"batch of {self.capacity} tokens is full")
        b = self.batch
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq
        self.n_tokens += 1
        return i

    def decode(self) -> None:
        self.batch.n_tokens = self.n_tokens
        code = self.lc.llama_decode(self.ctx, self.batch)
        self.n_tokens = 0
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def logits(self, index: int) -> np.ndarray:
        """Logits of the queued token at batch ``index`` of the last decode (a view)."""
        pointer = self.lc.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def forget(self, seq: int = -1) -> None:
        """Drop sequence ``seq``'s cache (-1: every sequence)."""
        if seq < 0:
            self.lc.llama_memory_clear(self.memory, True)
        else:
            self.lc.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def prefill(self, tokens: Sequence[int], seq: int = 0, start: int = 0) -> int:
        """Queue ``tokens`` at positions ``start``...; logits at the last only."""
        for offset, token in enumerate(tokens):
            index = self.add(token, start + offset, seq, offset == len(tokens) - 1)
        return index


@contextmanager
def engine(
    gguf: Path, *, slots: int, length: int, batch: int, flash_attn: str = "off"
) -> Iterator[Engine]:
    e = Engine(gguf, slots=slots, length=length, batch=batch, flash_attn=flash_attn)
    try:
        yield e
    finally:
        e.close()


def greedy(e: Engine, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """``new_tokens`` greedy tokens after ``prompt`` (sequence 0, from an empty cache)."""
    e.forget()
    last = e.prefill(prompt)
    e.decode()
    out: list[int] = []
    while True:
        out.append(int(np.argmax(e.logits(last))))
        if len(out) == new_tokens:
            return out
        last = e.add(out[-1], len(prompt) + len(out) - 1, 0, True)
        e.decode()


def single(checkpoint: Path, variant: str, repeats: int, new_tokens: int, flash_attn: str) -> None:
    gguf = export(checkpoint, variant)
    prompt = prompt_ids(checkpoint)
    length = len(prompt) + new_tokens
    with engine(gguf, slots=1, length=length, batch=len(prompt), flash_attn=flash_attn) as e:

        def run() -> None:
            assert len(greedy(e, prompt, new_tokens)) == new_tokens

        run()  # warm-up
        seconds = best_of(repeats, run)
        emit(
            {
                "tokens_per_s": new_tokens / seconds,
                "threads": e.threads,
                "variant": variant,
                "flash_attn": flash_attn,
                "file_bytes": gguf.stat().st_size,
                "version": e.version,
            }
        )


def sweep(
    checkpoint: Path, records_file: Path, variant: str, parallel: int, flash_attn: str
) -> None:
    """Continuous batching over ``parallel`` slots, in the records' order."""
    started = time.perf_counter()
    gguf = export(checkpoint, variant)
    records = [json.loads(line) for line in records_file.read_text().splitlines() if line]
    prompts = token_ids(checkpoint, [r["prompt"] for r in records])
    params = [r["generation"] for r in records]
    length = max(len(p) + g["max_new_tokens"] for p, g in zip(prompts, params, strict=True))
    longest = max(len(p) for p in prompts)
    slots = min(parallel, len(records))
    batch = slots * (longest + 1)  # every slot prefilling at once
    with engine(gguf, slots=slots, length=length, batch=batch, flash_attn=flash_attn) as e:
        lc = e.lc
        queue = list(range(len(records)))[::-1]
        # per slot: [record, position of the next token, tokens still to make, sampler,
        # the token sampled last (fed in the next decode)]
        active: dict[int, list[Any]] = {}
        free = list(range(slots))[::-1]
        generated = decodes = 0
        while queue or active:
            outputs: dict[int, int] = {}  # slot -> batch index of its logits
            for slot, state in active.items():  # each running sequence's next token
                outputs[slot] = e.add(state[4], state[1], slot, True)
                state[1] += 1
            while free and queue:  # free slots take the next records, prefilled now
                slot, record = free.pop(), queue.pop()
                g = params[record]
                chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
                for sampler in (  # llama.cpp's own order; top-k 0 and top-p 1 are no-ops
                    lc.llama_sampler_init_top_k(g.get("top_k") or 0),
                    lc.llama_sampler_init_top_p(g.get("top_p", 1.0), 1),
                    lc.llama_sampler_init_temp(g.get("temperature", 1.0)),
                    lc.llama_sampler_init_dist(g.get("seed", 0)),
                ):
                    lc.llama_sampler_chain_add(chain, sampler)
                outputs[slot] = e.prefill(prompts[record], slot)
                active[slot] = [record, len(prompts[record]), g["max_new_tokens"], chain, -1]
            e.decode()
            decodes += 1
            for slot, index in outputs.items():
                state = active[slot]
                state[4] = lc.llama_sampler_sample(state[3], e.ctx, index)
                state[2] -= 1
                generated += 1
                if state[2] == 0:  # done: free the slot and its cache for the next record
                    lc.llama_sampler_free(state[3])
                    e.forget(slot)
                    del active[slot]
                    free.append(slot)
        emit(
            {
                "seconds_in_process": time.perf_counter() - started,
                "tokens": generated,
                "decodes": decodes,
                "parallel": slots,
                "threads": e.threads,
                "variant": variant,
                "flash_attn": flash_attn,
                "version": e.version,
            }
        )


def reference(checkpoint: Path, out: Path, steps: int) -> None:
    """Our torch backend's side of ``check``: last-position logits after the benchmark
    prompt and after each of ``steps`` - 1 greedy tokens, saved to ``out`` [steps, vocab].
    Through the public API only (``gpt_simple.load_for_inference`` returns the torch
    ``nn.Module``; ``model(input_ids=...)`` is the trainer's whole-sequence forward, no
    cache), so it is independent of llama.cpp's incremental decode it is compared with."""
    import torch

    import gpt_simple

    model, _, _ = gpt_simple.load_for_inference(checkpoint, backend="torch", dtype="fp32")
    ids = torch.tensor([prompt_ids(checkpoint)])
    rows = []
    with torch.inference_mode():
        for _ in range(steps):
            row = model(input_ids=ids).logits[0, -1].float()
            rows.append(row.numpy().copy())
            ids = torch.cat((ids, row.argmax().reshape(1, 1)), dim=1)
    np.save(out, np.stack(rows))


def check(checkpoint: Path, steps: int, flash_attn: str = "off") -> dict[str, Any]:
    """llama.cpp F32 against our torch backend on the benchmark prompt, then ``steps`` - 1
    greedy tokens: torch's logits come from ``reference`` in its own process (so torch's and
    llama.cpp's OpenMP runtimes never share one); llama.cpp is fed torch's greedy tokens, so
    every row compares the same sequence, and then generates greedily on its own. Prints and
    returns the max absolute difference and how many greedy tokens agree."""
    gguf = export(checkpoint, "f32")
    with tempfile.TemporaryDirectory() as tmp:
        ref_file = Path(tmp) / "torch.npy"
        argv = [sys.executable, "-m", "benchmarks.workers.llama_cpp", "reference"]
        argv += [str(checkpoint), str(ref_file), "--steps", str(steps)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        ref = np.load(ref_file)
    prompt = prompt_ids(checkpoint)
    rows = []
    length = len(prompt) + steps
    with engine(gguf, slots=1, length=length, batch=len(prompt), flash_attn=flash_attn) as e:
        last = e.prefill(prompt)
        e.decode()
        for step in range(steps):
            rows.append(e.logits(last).copy())
            if step + 1 < steps:
                last = e.add(int(np.argmax(ref[step])), len(prompt) + step, 0, True)
                e.decode()
        free_running = greedy(e, prompt, steps)
    ours = np.stack(rows)
    width = min(ours.shape[1], ref.shape[1])  # same vocab_size, unless the backend trims
    diff = float(np.abs(ours[:, :width] - ref[:, :width]).max())
    torch_tokens = ref[:, :width].argmax(1).tolist()
    agree = sum(a == b for a, b in zip(free_running, torch_tokens, strict=True))
    result = {
        "max_abs_diff": diff,
        "prompt_max_abs_diff": float(np.abs(ours[0, :width] - ref[0, :width]).max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "greedy_agree": agree,
        "steps": steps,
        "flash_attn": flash_attn,
        "ok": diff <= CHECK_TOLERANCE and agree == steps,
    }
    print(
        f"llama.cpp F32 vs torch on {checkpoint.name}: max |dlogit| {diff:.3g} "
        f"(max |logit| {result['max_abs_logit']:.3g}), greedy tokens agree {agree}/{steps}, "
        f"flash attention {flash_attn}",
        file=sys.stderr,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("single")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("--variant", choices=VARIANTS, default="f32")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    w = sub.add_parser("sweep")
    w.add_argument("checkpoint", type=Path)
    w.add_argument("records", type=Path)
    w.add_argument("--variant", choices=VARIANTS, default="f32")
    w.add_argument("--parallel", type=int, required=True, help="sequence slots")
    c = sub.add_parser("check")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--steps", type=int, default=32)
    for command in (s, w, c):
        command.add_argument("--flash-attn", choices=FLASH_ATTN, default="off")
    r = sub.add_parser("reference", help="check's torch side (needs no llama.cpp)")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    if args.command == "reference":
        reference(args.checkpoint, args.out, args.steps)
        return
    try:
        import llama_cpp  # noqa: F401 - only to tell "not installed" from a failure
    except ImportError:
        emit({"not_installed": INSTALL})
        sys.exit(3)
    if args.command == "single":
        single(args.checkpoint, args.variant, args.repeats, args.new_tokens, args.flash_attn)
    elif args.command == "sweep":
        sweep(args.checkpoint, args.records, args.variant, args.parallel, args.flash_attn)
    else:
        emit(check(args.checkpoint, args.steps, args.flash_attn))


if __name__ == "__main__":
    main()
