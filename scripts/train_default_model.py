#!/usr/bin/env python
"""Train gpt-simple's embedded default model (``builtin:default``) from CPython's documentation.

The training text is CPython's ``pydoc_data.topics`` (the reference-manual topics behind
``help("assert")``; PSF License, shipped with every CPython), so anyone can rebuild the model
with nothing but this repository and the ``torch`` extra::

    OMP_NUM_THREADS=1 python scripts/train_default_model.py

It trains a byte-level BPE tokenizer (with the trainer's ``<|endoftext|>`` and ``<|pad|>``),
then a small model of the gpt-simple architecture with :class:`gpt_simple_torch.model.GPT`
(AdamW, linear warmup then cosine decay, fixed seed), on the CPU in about 35 minutes on one
thread, and writes the gpt-simple checkpoint layout to
``gpt_simple_core/builtin_models/default/`` (``model/``, ``tokenizer/``, ``trainer_state.json``
and a ``README.md`` with provenance, final losses and a sample). Finally it loads the result
through the torch backend, exactly as ``gpt-simple generate`` would, and decodes greedily.

Reproducibility: the seed fixes initialisation and batch order; the same Python (its topics
text, whose SHA-256 is recorded), torch version, thread count and CPU family give the same
weights, and other set-ups a model of the same quality.
"""

# ruff: noqa: E402 - the path and OMP_WAIT_POLICY must be set before the imports below
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "backends")]  # run from a checkout
# Set before torch loads its OpenMP runtime: idle threads sleep instead of spinning (we share
# the machine; see shared/notes/cpu-and-onnx-facts.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpt_simple_core.protocol import LoadRequest
from gpt_simple_lm_format import layout as gpt_simple_layout
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_torch.model import GPT
from gpt_simple_torch.plugin import TorchBackend

DEFAULT_OUTPUT = REPO_ROOT / "gpt_simple_core" / "builtin_models" / "default"
EOS, PAD = "<|endoftext|>", "<|pad|>"
SAMPLE_PROMPT = "The assert statement"
MAX_WEIGHT_BYTES = 15_000_000


@dataclass(frozen=True)
class Hyperparameters:
    """Everything that decides the result. Sizes were chosen to fit 15 MB of fp32 weights
    and ~35 minutes of one CPU thread (~2,000 training tokens/s measured on a 2-vCPU Xeon)."""

    # BPE merges up to 4095 tokens + <|pad|> = 4096, already a multiple of 128, so the model's
    # vocab has no padding band. ~465 KB of text becomes ~130k tokens.
    tokenizer_size: int = 4095
    # 6 layers x 192 wide (6 heads of 32), gated SwiGLU FFN of 512: 3.4M parameters, 13.8 MB.
    # Depth over width: at this size a deeper model writes better prose for the same budget.
    n_embd: int = 192
    n_layer: int = 6
    n_head: int = 6
    n_positions: int = 256  # training window; the backend extrapolates past it
    # 1000 steps x 16 windows x 256 tokens = 4.1M tokens, ~30 passes over the text: the model
    # learns the documentation nearly by heart, which is what a demo model should show.
    steps: int = 1000
    batch_size: int = 16
    peak_lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1  # on matrices only, not on norm gains
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 1337
    # every 20th topic (sorted by name, starting with the 11th) is held out for validation
    val_every: int = 20
    val_offset: int = 10


def documents() -> tuple[list[tuple[str, str]], str]:
    """The ``(topic, text)`` pairs of ``pydoc_data.topics`` sorted by name, and the SHA-256 of
    their concatenation (which identifies the CPython version's documentation)."""
    from pydoc_data.topics import topics

    pairs = sorted(topics.items())
    digest = hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in pairs).encode()).hexdigest()
    return pairs, digest


def train_tokenizer(texts: list[str], size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE, with ``<|pad|>`` added after training as the trainer does."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([PAD])
    return tokenizer


def token_stream(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts encoded, each followed by ``<|endoftext|>``, as one 1-D tensor."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids += [*encoding.ids, eos]
    return torch.tensor(ids, dtype=torch.long)


def batch(stream: torch.Tensor, size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` random windows of ``length`` tokens (the model shifts labels itself)."""
    starts = torch.randint(0, len(stream) - length, (size,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def learning_rate(step: int, hp: Hyperparameters) -> float:
    """Linear warmup to ``peak_lr``, then cosine decay to ``min_lr`` at the last step."""
    if step < hp.warmup_steps:
        return hp.peak_lr * (step + 1) / hp.warmup_steps
    progress = (step - hp.warmup_steps) / max(1, hp.steps - hp.warmup_steps)
    return hp.min_lr + 0.5 * (hp.peak_lr - hp.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: GPT, stream: torch.Tensor, hp: Hyperparameters) -> float:
    """Mean loss over consecutive windows covering ``stream`` (deterministic, no sampling)."""
    model.eval()
    length = hp.n_positions
    windows = stream[: (len(stream) // length) * length].view(-1, length)
    losses = [
        model(input_ids=chunk, labels=chunk).loss.item() for chunk in windows.split(hp.batch_size)
    ]
    model.train()
    return sum(losses) / len(losses)


def train(
    hp: Hyperparameters, train_ids: torch.Tensor, val_ids: torch.Tensor, config: ModelConfig
) -> tuple[GPT, dict]:
    torch.manual_seed(hp.seed)
    model = GPT(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=hp.peak_lr,
        betas=hp.betas,
    )
    generator = torch.Generator().manual_seed(hp.seed)
    model.train()
    started = time.perf_counter()
    recent: list[float] = []
    for step in range(hp.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, hp)
        x = batch(train_ids, hp.batch_size, hp.n_positions, generator)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-49:], loss.item()]
        done = step + 1
        if done % 25 == 0 or done == hp.steps:
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (hp.steps - done)
            line = (
                f"step {done}/{hp.steps} loss {sum(recent) / len(recent):.3f} "
                f"lr {learning_rate(step, hp):.2e} {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min"
            )
            if done % 200 == 0 or done == hp.steps:
                line += f" | val loss {evaluate(model, val_ids, hp):.3f}"
            print(line, flush=True)
    model.eval()
    stats = {
        "train_loss": round(evaluate(model, train_ids, hp), 4),
        "val_loss": round(evaluate(model, val_ids, hp), 4),
        "train_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    return model, stats


def write_checkpoint(out: Path, model: GPT, tokenizer: Tokenizer, state: dict, readme: str) -> None:
    """The gpt-simple checkpoint layout, written to ``out.partial`` then renamed into place."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "model").mkdir(parents=True)
    (partial / "tokenizer").mkdir()
    config = model.config.to_dict()
    (partial / "model" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(partial / "model" / "model.safetensors"))
    tokenizer.save(str(partial / "tokenizer" / "tokenizer.json"))
    side = {"eos_token": EOS, "pad_token": PAD, "model_max_length": model.config.n_positions}
    (partial / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(side, indent=2) + "\n")
    (partial / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    (partial / "README.md").write_text(readme)
    size = (partial / "model" / "model.safetensors").stat().st_size
    if size > MAX_WEIGHT_BYTES:
        raise SystemExit(f"weights are {size} bytes, over the {MAX_WEIGHT_BYTES} budget")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def greedy_sample(checkpoint: Path, prompt: str, new_tokens: int) -> str:
    """Load ``checkpoint`` through the torch backend and continue ``prompt`` greedily, through
    the same protocol calls the core's decode loop makes."""
    info = gpt_simple_layout.inspect(checkpoint, None, load_tokenizer=True)
    model = TorchBackend().load(info, LoadRequest(device="cpu", dtype="fp32"))
    tokenizer = model.tokenizer
    banned = [*tokenizer.never_generate, *range(len(tokenizer), model.config.vocab_size)]
    ids = tokenizer.encode(prompt)
    feed, generated = ids, []
    for _ in range(new_tokens):
        logits = model.forward([0], [feed])[0]
        logits[banned] = -float("inf")
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        generated.append(token)
        feed = [token]
    model.close()
    return prompt + tokenizer.decode(generated)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} vCPUs)"
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}"


README = """# builtin:default

A small model of the gpt-simple architecture, embedded in the package so that `gpt-simple`
works without downloading anything. It knows one thing: the Python language reference topics
that `help()` shows. Expect documentation-flavoured prose, not a capable assistant.

## Provenance and licence
- Training text: `pydoc_data.topics` of CPython {python}: {n_topics} topics, {n_chars:,}
  characters, SHA-256 `{text_sha256}`.
  From the Python documentation, Copyright Python Software Foundation, under the PSF License
  Agreement (https://docs.python.org/3/license.html).
- Tokenizer, weights and this folder: produced by `scripts/train_default_model.py` of
  gpt-simple-inference (MIT licence) with torch {torch_version} on {machine}.

## Model
- {n_layer} layers, {n_embd} wide, {n_head} heads; gated SwiGLU FFN of {ffn}; RMSNorm; RoPE;
  tied embeddings; trained context {n_positions} tokens.
- {params:,} parameters: {weight_mb:.1f} MB of fp32 safetensors.
- Byte-level BPE tokenizer of {tokenizer_size} tokens (`<|endoftext|>` is EOS, `<|pad|>` is
  pad); vocab_size {vocab_size}.

## Training
- AdamW: betas {betas}, weight decay {weight_decay} on matrices only, gradient clipping
  {grad_clip}.
- Learning rate: linear warmup over {warmup_steps} steps to {peak_lr}, cosine decay to {min_lr}.
- {steps} steps of {batch_size} windows of {n_positions} tokens: {tokens:,} tokens, {epochs:.1f}
  passes over {train_tokens:,} training tokens.
- Seed {seed}; {threads} CPU thread(s); {train_minutes} minutes.
- Every {val_every}th topic is held out for validation.

Final loss (mean cross-entropy, nats/token): train {train_loss}, validation {val_loss}.
The validation topics are unseen; the model is meant to know the training topics by heart.

## Reproduce
```
OMP_NUM_THREADS=1 python scripts/train_default_model.py
```
The seed fixes the initialisation and the batch order. Expect the same weights from the same
Python version (same topics text), torch version, thread count and CPU family, and the same
quality elsewhere.

## Sample (greedy, at most {sample_tokens} new tokens)
```
{sample}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--steps", type=int, help="override the step count (smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--sample-tokens", type=int, default=80)
    args = parser.parse_args(argv)

    hp = Hyperparameters()
    if args.steps is not None:
        hp = Hyperparameters(steps=args.steps, warmup_steps=min(hp.warmup_steps, args.steps))
    torch.set_num_threads(args.threads)

    pairs, text_sha256 = documents()
    held_out = {i for i in range(len(pairs)) if i % hp.val_every == hp.val_offset}
    train_texts = [text for i, (_, text) in enumerate(pairs) if i not in held_out]
    val_texts = [text for i, (_, text) in enumerate(pairs) if i in held_out]
    tokenizer = train_tokenizer(train_texts, hp.tokenizer_size)
    tokenizer_size = tokenizer.get_vocab_size(with_added_tokens=True)
    config = ModelConfig(
        vocab_size=128 * math.ceil(tokenizer_size / 128),  # the trainer's rule
        n_embd=hp.n_embd,
        n_layer=hp.n_layer,
        n_head=hp.n_head,
        n_positions=hp.n_positions,
    )
    train_ids, val_ids = token_stream(tokenizer, train_texts), token_stream(tokenizer, val_texts)
    print(
        f"text: {len(pairs)} topics ({len(held_out)} held out), sha256 {text_sha256[:12]}; "
        f"tokens: train {len(train_ids):,}, val {len(val_ids):,}; tokenizer {tokenizer_size}; "
        f"model {config.param_count():,} parameters; {hp.steps} steps on {args.threads} thread(s)",
        flush=True,
    )

    model, stats = train(hp, train_ids, val_ids, config)
    tokens = hp.steps * hp.batch_size * hp.n_positions
    state = {
        "schema_version": 1,
        "step": hp.steps,
        **stats,
        "tokens_seen": tokens,
        "hyperparameters": asdict(hp),
        "threads": args.threads,
        "text": "pydoc_data.topics",
        "text_sha256": text_sha256,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    facts = {
        **asdict(hp),
        **stats,
        "python": platform.python_version(),
        "n_topics": len(pairs),
        "n_chars": sum(len(text) for _, text in pairs),
        "text_sha256": text_sha256,
        "torch_version": torch.__version__,
        "machine": cpu_name(),
        "ffn": config.ffn_size,
        "params": config.param_count(),
        "weight_mb": 4 * config.param_count() / 1e6,
        "tokenizer_size": tokenizer_size,
        "vocab_size": config.vocab_size,
        "tokens": tokens,
        "train_tokens": len(train_ids),
        "epochs": tokens / len(train_ids),
        "threads": args.threads,
        "sample_tokens": args.sample_tokens,
    }
    out = args.output.resolve()
    write_checkpoint(out, model, tokenizer, state, README.format(**facts, sample="(pending)"))
    sample = greedy_sample(out, SAMPLE_PROMPT, args.sample_tokens)
    (out / "README.md").write_text(README.format(**facts, sample=sample))
    print(f"wrote {out}\n--- greedy sample ---\n{sample}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
