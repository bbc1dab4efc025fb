"""Our side, through the public Python API (``gpt_simple``), in its own process.

Commands (one JSON line out):

* ``single CHECKPOINT [--backend NAME] [--naive]``: greedy tokens/s at batch 1 (a 32-token
  prompt, 128 new tokens, ``ignore_eos``) and the last-position logits' fingerprint;
* ``logits CHECKPOINT OUT.npy [--backend NAME] [--feed OTHER.npy]``: last-position logits of
  the benchmark prompt after each of a few greedy steps (for the int8 drift);
* ``greedy CHECKPOINT OUT.json [--backend NAME] [--new-tokens N]``: greedy token ids after
  each of :data:`GREEDY_PROMPTS` (text the builtin model was trained on), for the agreement of
  a quantized export with fp32;
* ``load CHECKPOINT``: peak RSS growth while the torch backend loads the checkpoint.

``--naive`` imports torch before gpt-simple with torch's defaults (all cores, the OpenMP
runtime's default spin-waiting), which is what the engine's defaults exist to avoid.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.workers.common import best_of, emit, peak_rss_growth

PROMPT_TOKENS = 32
NEW_TOKENS = 128
#: Openings of the kind of text the builtin model saw (Python's documentation).
GREEDY_PROMPTS = (
    "The assert statement is a convenient way to",
    "Objects are Python's abstraction for data.",
    "An exception is raised when",
    "The import statement",
    "A class definition",
    "Strings are immutable",
    "The for statement is used to",
    "Dictionaries map",
)


def benchmark_prompt() -> str:
    """32 words of the synthetic tokenizer: exactly 32 tokens."""
    return " ".join(f"w{i}" for i in range(100, 100 + PROMPT_TOKENS))


def single(checkpoint: Path, backend: str | None, repeats: int, new_tokens: int) -> None:
    import gpt_simple

    model, tokenizer, _ = gpt_simple.load_for_inference(checkpoint, backend=backend)

    notes = {}

    def run() -> None:
        (record,) = gpt_simple.generate_records(
            model,
            tokenizer,
            benchmark_prompt(),
            max_new_tokens=new_tokens,
            do_sample=False,
            ignore_eos=True,
        )
        assert record["meta"]["completion_tokens"] == new_tokens, record
        notes.update(record["meta"].get("notes", {}))

    run()  # warm-up
    seconds = best_of(repeats, run)
    emit({"tokens_per_s": new_tokens / seconds, "threads": notes.get("threads")})


def logits(
    checkpoint: Path, out: Path, backend: str | None, steps: int, follow: Path | None
) -> None:
    """Drive the backend through the protocol: prefill, then ``steps - 1`` greedy tokens; save
    the logits of every step. With ``follow`` (another run's saved logits) feed that run's
    greedy tokens instead of our own, so both runs see the same sequence."""
    import numpy as np

    loaded = load_through_session(checkpoint, backend)
    tokenizer = loaded.tokenizer
    leader = np.load(follow) if follow is not None else None
    feed = tokenizer.encode(benchmark_prompt())
    rows = []
    for step in range(steps):
        row = loaded.forward([0], [feed])[0]
        rows.append(row.copy())
        chosen = row if leader is None else leader[step]
        feed = [int(np.argmax(chosen))]
    np.save(out, np.stack(rows))
    emit({"saved": str(out), "steps": steps})


def greedy(checkpoint: Path, out: Path, backend: str | None, new_tokens: int) -> None:
    """Greedy continuations (argmax, EOS ignored) of every prompt, one row each, through the
    protocol: the sequences two runs are compared on."""
    import json

    import numpy as np

    loaded = load_through_session(checkpoint, backend)
    runs = []
    for prompt in GREEDY_PROMPTS:
        feed, tokens = loaded.tokenizer.encode(prompt), []
        for _ in range(new_tokens):
            feed = [int(np.argmax(loaded.forward([0], [feed])[0]))]
            tokens.append(feed[0])
        loaded.release([0])
        runs.append(tokens)
    out.write_text(json.dumps(runs))
    emit({"saved": str(out), "prompts": len(runs), "new_tokens": new_tokens})


def load_through_session(
    checkpoint: Path, backend: str | None, device: str | None = None, dtype: str | None = None
) -> Any:
    """The backend's model object (the protocol's ``LoadedModel``), loaded as any run loads
    it: through a :class:`~gpt_simple_core.session.Session` and its pre-flight."""
    from gpt_simple_core.records.schema import ModelSpec
    from gpt_simple_core.registry import default_registry
    from gpt_simple_core.session import Session
    from gpt_simple_core.settings import RunOptions, Settings

    session = Session(Settings(run=RunOptions(device=device)), default_registry(), progress=False)
    loaded, _ = session.load(ModelSpec(checkpoint=str(checkpoint), backend=backend, dtype=dtype))
    return loaded


def load(checkpoint: Path) -> None:
    import torch  # imported before the measurement: the peak is the load's, not torch's

    weights = checkpoint / "model" / "model.safetensors"

    def load_and_touch() -> None:
        model = load_through_session(checkpoint, "torch", device="cpu", dtype="fp32")
        with torch.inference_mode():  # every weight read once: a mapped file counts too
            model.forward([0], [[1, 2, 3]])

    growth, _ = peak_rss_growth(load_and_touch)
    emit({"peak_rss_growth": growth, "weights": weights.stat().st_size})


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("single")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("--backend")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    s.add_argument("--naive", action="store_true", help="torch imported first, its defaults")
    g = sub.add_parser("logits")
    g.add_argument("checkpoint", type=Path)
    g.add_argument("out", type=Path)
    g.add_argument("--backend")
    g.add_argument("--steps", type=int, default=8)
    g.add_argument("--feed", type=Path, help="saved logits whose greedy tokens to feed")
    r = sub.add_parser("greedy")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--backend")
    r.add_argument("--new-tokens", type=int, default=64)
    m = sub.add_parser("load")
    m.add_argument("checkpoint", type=Path)
    args = parser.parse_args()
    if getattr(args, "naive", False):
        import torch  # noqa: F401 - first, so the torch plugin cannot ask for PASSIVE waiting
    if args.command == "single":
        single(args.checkpoint, args.backend, args.repeats, args.new_tokens)
    elif args.command == "logits":
        logits(args.checkpoint, args.out, args.backend, args.steps, args.feed)
    elif args.command == "greedy":
        greedy(args.checkpoint, args.out, args.backend, args.new_tokens)
    else:
        load(args.checkpoint)


if __name__ == "__main__":
    main()
