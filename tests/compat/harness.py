"""The machinery of the trainer-compatibility check: two virtualenvs, a tiny training run with
the trainer's own CLI, one subprocess per tool, and the comparison.

Why two virtualenvs: the trainer (``gpt-simple-lm``) and this project both install the import
package ``gpt_simple`` and the ``gpt-simple`` command, so they can never share one. Ours is the
interpreter running pytest (the nox session's); the trainer's is built here with ``python -m
venv`` + pip and reused while its requirements do not change. Every tool runs in a subprocess
with its own interpreter, and the trainer's subprocesses get an environment without
``PYTHONPATH``, so our checkout can never shadow its ``gpt_simple``.

Nothing here imports torch: the test process only orchestrates and compares (numpy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
CONSTRAINTS = REPO_ROOT / "constraints.txt"

# What the trainer's virtualenv holds. gpt-simple-lm's own metadata pulls transformers,
# accelerate, sentencepiece and pyyaml; numpy<2 because 0.1.2 declares it; transformers>=5
# because our spec describes the trainer's decode under transformers 5 (4.x collapsed " ." to
# "."). torch comes through constraints.txt (the local CPU wheel, never GBs of CUDA wheels).
TRAINER_REQUIREMENTS = ("gpt-simple-lm==0.1.2", "numpy<2", "transformers>=5")
EOS_TEXT = "<|endoftext|>"
LOGITS_TOLERANCE = 1e-4

# Environment for every subprocess: one thread each (the CI machine has 2 cores, shared), no
# GPU (the comparison is CPU fp32), nothing fetched from the Hugging Face hub, no telemetry.
COMMON_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
    "PYTHONNOUSERSITE": "1",
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "160",  # the trainer logs through rich: keep its lines readable in CI logs
}


class HarnessError(RuntimeError):
    """A step of the harness failed (not a comparison result): message carries its output."""


# --------------------------------------------------------------------------------------------
# Subprocesses and environments


def trainer_env(workdir: Path) -> dict[str, str]:
    """The trainer's environment: ours minus anything that could put our ``gpt_simple`` on its
    path, with its caches (hub, accelerate) inside ``workdir``. Bytecode writing is allowed:
    its virtualenv is installed without compiling (faster), so the first import writes the
    ``.pyc`` files the later runs read."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(COMMON_ENV)
    env["HF_HOME"] = str(workdir / "hf-home")
    return env


def ours_env() -> dict[str, str]:
    """Our environment: inherited as is (a development ``PYTHONPATH`` pointing at the checkout
    is kept), plus the common settings."""
    env = dict(os.environ)
    env.update(COMMON_ENV)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    what: str,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; on failure raise :class:`HarnessError` with the tail of its output."""
    started = time.monotonic()
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(
            f"{what} failed (exit {proc.returncode}, {time.monotonic() - started:.0f}s): "
            f"{' '.join(os.fspath(a) for a in argv)}\n"
            f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-4000:]}"
        )
    return proc


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_script(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_trainer_venv(cache_root: Path) -> Path:
    """The trainer's virtualenv under ``cache_root``, built on first use; returns its python.

    A stamp file records the requirements, the constraints and our Python version: when any of
    them changes the virtualenv is rebuilt, otherwise it is reused (pip takes over a minute)."""
    key = json.dumps(
        {
            "requirements": TRAINER_REQUIREMENTS,
            "constraints": CONSTRAINTS.read_text(encoding="utf-8"),
            "python": list(sys.version_info[:3]),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    venv = cache_root / f"trainer-venv-{digest}"
    stamp = venv / "compat-stamp.json"
    python = venv_python(venv)
    if stamp.is_file() and python.is_file():
        return python
    if venv.exists():
        shutil.rmtree(venv)  # half-built by an interrupted run
    cache_root.mkdir(parents=True, exist_ok=True)
    env = trainer_env(cache_root)
    run(
        [sys.executable, "-m", "venv", venv],
        env=env,
        cwd=cache_root,
        timeout=300,
        what="creating the trainer's virtualenv",
    )
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            # Compiling all of torch's .py files takes longer than installing it; the few
            # modules the trainer imports are compiled on first use instead.
            "--no-compile",
            "-c",
            CONSTRAINTS,
            *TRAINER_REQUIREMENTS,
        ],
        env=env,
        cwd=cache_root,
        timeout=1200,
        what="installing the trainer (gpt-simple-lm) into its virtualenv",
    )
    stamp.write_text(key, encoding="utf-8")
    return python


# --------------------------------------------------------------------------------------------
# Training inputs: text, tokenizer, configs


# CPython's reference-manual topics for short statements (``help("assert")``; PSF licence, in
# every CPython): about 10 KB, ~4k tokens. Small on purpose: a tiny model memorises it within
# a few hundred steps, so greedy continuations are long, varied, recognisable text (and some
# end with EOS) instead of one repeated token, which would make the text comparison weak.
TOPICS = (
    "assert",
    "pass",
    "del",
    "return",
    "break",
    "continue",
    "if",
    "while",
    "for",
    "global",
    "lambda",
    "yield",
)
# Plus short paragraphs of other topics (one training window each, so the model learns where
# they end): prompted with their first words, the model recites them and emits EOS, which is
# how the EOS handling gets compared (the long topics are cut into windows, and the windows
# with their ends are packed behind other text, so they are not reproducible from a prompt).
SHORT_DOCUMENTS = 8
TRAIN_REPEATS = 60  # its loader reads each shard once: ~300k tokens for 240 x 8 x 128
TOKENIZER_SIZE = 500  # + the trainer's <|pad|> = 501, so vocab_size 512 has a padding band

# Two architectures, trained side by side (one thread each). "llama" is the trainer's default
# family (RMSNorm, SwiGLU, tied head) with grouped-query attention; "variant" takes every
# non-default branch of the trainer's model code that a checkpoint can select: LayerNorm,
# plain GELU MLP, biases with a per-group override, untied head, multi-query attention, NTK
# RoPE scaling and a non-default base. The long prompt alone exceeds n_positions, so both sides
# extrapolate RoPE there.
WINDOW = 128  # training sequence length = n_positions
OVERLAP = 16
BASE_MODEL = {"n_embd": 96, "n_layer": 2, "n_head": 4, "n_positions": WINDOW}
MODELS: dict[str, dict[str, Any]] = {
    "llama": {**BASE_MODEL, "n_kv_head": 2},
    "variant": {
        **BASE_MODEL,
        "n_kv_head": 1,
        "norm": "layernorm",
        "norm_eps": 1e-6,
        "mlp_type": "mlp",
        "activation": "gelu",
        "use_bias": True,
        "attn_out_bias": False,
        "tie_word_embeddings": False,
        "rope_base": 500.0,
        "rope_scaling_type": "ntk",
        "rope_scaling_factor": 2.0,
    },
}
TRAIN_STEPS = 240
LEARNING_RATE = 6e-3


def documents() -> list[str]:
    """The training documents: the long topics, then the short paragraphs."""
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in TOPICS] + short_documents()


def short_documents() -> list[str]:
    """Paragraphs of 200 to 240 characters (the trainer's JSONL reader drops documents under
    200) from the other topics, the first of each topic, in topic order."""
    from pydoc_data.topics import topics

    found = []
    for name, text in sorted(topics.items()):
        if name in TOPICS:
            continue
        for paragraph in text.split("\n\n"):
            paragraph = paragraph.strip()
            if 200 <= len(paragraph) <= 240 and "\n   " not in paragraph:
                found.append(paragraph)
                break
    return found[:SHORT_DOCUMENTS]


def long_prompt() -> str:
    """The start of the "for" topic: several times the model's context (``WINDOW``), so the
    prompt and its continuation run far into RoPE extrapolation, where a last-bit difference in
    the rotary frequencies would grow past the logits tolerance."""
    return documents()[TOPICS.index("for")][:1000]


def eos_prompts(count: int = 3) -> list[str]:
    """The first words of ``count`` short documents spread over the list: the model recites
    the rest and stops with EOS."""
    docs = short_documents()
    picks = [docs[i * len(docs) // count] for i in range(count)]
    return [" ".join(doc.split(" ")[:6]) for doc in picks]


def build_tokenizer(texts: Sequence[str], folder: Path) -> Path:
    """A GPT-2-style byte-level BPE ``tokenizer.json`` with ``<|endoftext|>`` (id 0) and no pad
    token: the trainer adds ``<|pad|>`` itself and saves the result in the run directory, which
    is part of what this check exercises."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE,
        special_tokens=[EOS_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def write_training_inputs(trainer_python: Path, workdir: Path) -> dict[str, Path]:
    """Data, tokenizer folder and one config per model; returns ``{name: config path}``.

    The data goes the trainer's default way: JSONL (``{"text": ...}`` lines) pre-tokenised by
    its own ``gpt-simple tokenize`` into ``data/{train,val}/<bucket>/*.bin|idx``, which its
    loader reads in shuffled order (its legacy on-the-fly JSONL reader streams documents in
    file order, so a few hundred steps never see the end of the file)."""
    texts = documents()
    tokenizer_dir = build_tokenizer(texts, workdir / "tokenizer")
    data = workdir / "data"
    gpt_simple = venv_script(trainer_python.parent.parent, "gpt-simple")
    for split, docs in (("train", texts * TRAIN_REPEATS), ("val", texts)):
        raw = workdir / "raw" / split
        raw.mkdir(parents=True, exist_ok=True)
        with open(raw / "part-0.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
        run(
            [
                gpt_simple,
                "tokenize",
                "--input_dir",
                raw,
                "--output_dir",
                data / split / "docs",
                "--tokenizer_path",
                tokenizer_dir,
                "--max_length",
                str(WINDOW),
                "--overlap_size",
                str(OVERLAP),
            ],
            env=trainer_env(workdir),
            cwd=workdir,
            timeout=300,
            what=f"the trainer's `gpt-simple tokenize` ({split})",
        )
    configs = {}
    for name, model in MODELS.items():
        config = {
            "model": model,
            "data": {
                "path": str(data),
                "tokenizer": str(tokenizer_dir),  # a local folder: the hub is not reachable
                "format": "pretokenized",
                "max_length": WINDOW,
                "overlap_size": OVERLAP,
                "num_workers": 0,
            },
            "optimizer": {"learning_rate": LEARNING_RATE, "warmup_steps": 20},
            "training": {
                "per_device_batch_size": 8,
                "gradient_accumulation_steps": 1,
                "max_steps": TRAIN_STEPS,
                "gradient_checkpointing": False,
                "compile": False,
                "mixed_precision": "no",  # fp32 weights and training
                "seed": 42,
                "logging_steps": 60,
                "eval_steps": TRAIN_STEPS,
                "save_steps": TRAIN_STEPS,
                "max_eval_batches": 2,
                "keep_last_k": 1,
                "output_dir": str(workdir / "runs" / name),
            },
        }
        path = workdir / f"config-{name}.json"
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        configs[name] = path
    return configs


def train_all(trainer_python: Path, configs: Mapping[str, Path], workdir: Path) -> dict[str, Path]:
    """``gpt-simple train --config`` (the trainer's CLI) for every config, concurrently (each on
    one thread); returns ``{name: run directory}``."""
    gpt_simple = venv_script(trainer_python.parent.parent, "gpt-simple")
    env = trainer_env(workdir)
    procs = {}
    for name, config in configs.items():
        log = open(workdir / f"train-{name}.log", "w", encoding="utf-8")  # noqa: SIM115
        procs[name] = (
            subprocess.Popen(
                [os.fspath(gpt_simple), "train", "--config", os.fspath(config)],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    failures = []
    for name, (proc, log) in procs.items():
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        log.close()
        if code != 0:
            tail = (workdir / f"train-{name}.log").read_text(encoding="utf-8")[-4000:]
            failures.append(f"training {name!r} failed ({code}):\n{tail}")
    if failures:
        raise HarnessError("\n\n".join(failures))
    return {name: workdir / "runs" / name for name in configs}


# --------------------------------------------------------------------------------------------
# The three tools


def run_trainer_side(
    trainer_python: Path, request: Path, workdir: Path
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The trainer's ``load_for_inference`` + ``generate`` (and forward) in its virtualenv."""
    result, logits = workdir / "trainer.json", workdir / "trainer-logits.npz"
    run(
        [trainer_python, HERE / "trainer_side.py", request, result, logits],
        env=trainer_env(workdir),
        cwd=workdir,  # not the repository root, whose gpt_simple/ is ours
        timeout=600,
        what="the trainer's generation",
    )
    return _load(result, logits)


def run_ours_api(
    request: Path, trainer_result: Path, workdir: Path
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Our ``gpt_simple.load_for_inference`` + ``generate_records`` and forwards, in our
    virtualenv."""
    result, logits = workdir / "ours.json", workdir / "ours-logits.npz"
    run(
        [sys.executable, HERE / "ours_side.py", request, trainer_result, result, logits],
        env=ours_env(),
        cwd=workdir,
        timeout=600,
        what="our Python API generation",
    )
    return _load(result, logits)


def our_cli() -> list[str]:
    """Our ``gpt-simple`` command: the console script beside our interpreter when installed
    (nox), else the same entry point through ``-c`` (a development checkout on PYTHONPATH)."""
    script = venv_script(Path(sys.executable).parent.parent, "gpt-simple")
    if script.is_file():
        return [os.fspath(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from gpt_simple_core.cli.main import main; sys.exit(main())",
    ]


def run_ours_cli(
    run_dir: Path, prompts: Sequence[str], max_new_tokens: int, workdir: Path, tag: str
) -> list[dict[str, Any]]:
    """``gpt-simple generate --output-dir RUN --greedy --dtype fp32`` on all prompts at once
    (so they run batched); returns the output records in prompt order."""
    prompts_file = workdir / f"prompts-{tag}.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), "utf-8")
    output = workdir / f"cli-{tag}.jsonl"
    run(
        [
            *our_cli(),
            "generate",
            "--output-dir",
            run_dir,
            "--greedy",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--repetition-penalty",
            "1.0",
            "--max-new-tokens",
            str(max_new_tokens),
            "--prompts-file",
            prompts_file,
            "--output",
            output,
        ],
        env=ours_env(),
        cwd=workdir,
        timeout=600,
        what=f"our CLI on {run_dir}",
    )
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def _load(result: Path, logits: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(logits) as arrays:
        return json.loads(result.read_text(encoding="utf-8")), dict(arrays)


# --------------------------------------------------------------------------------------------
# The comparison


@dataclass
class PromptOutcome:
    """One prompt on one run, both sides, and the verdict.

    ``status``: ``match`` (identical text and token count), ``padding-band`` (the trainer
    generated an id we never generate: a difference we expect; the texts must still agree up
    to that token) or ``mismatch`` (a failure).
    """

    run: str
    prompt: str
    trainer_text: str
    expected: str  # the trainer's text with its trailing <|endoftext|> removed
    api_text: str
    cli_text: str
    trainer_ids: list[int]
    forbidden_ids: list[int]  # trainer ids we never generate (pad, padding band)
    ended_with_eos: bool
    status: str = "match"
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"[{self.run}] prompt {_short(self.prompt)}: {self.status}"]
        lines += [f"  - {p}" for p in self.problems]
        if self.status != "match":
            lines += [
                f"  trainer  : {self.trainer_text!r}",
                f"  expected : {self.expected!r}",
                f"  ours API : {self.api_text!r}",
                f"  ours CLI : {self.cli_text!r}",
                f"  trainer ids: {self.trainer_ids}",
            ]
        return "\n".join(lines)


@dataclass
class LogitsOutcome:
    """Max |trainer - ours| of one prompt's logits: at the prompt's last position (the next
    token's distribution), over every position of prompt + trainer continuation (uncached
    forwards on both sides), and our KV-cached path (prefill, then one token per call) against
    the trainer's uncached forward."""

    run: str
    prompt: str
    prompt_last: float
    all_positions: float
    cached: float
    max_abs_logit: float

    @property
    def worst(self) -> float:
        return max(self.prompt_last, self.all_positions, self.cached)


@dataclass
class Report:
    """The whole comparison: :meth:`failures` decides, :meth:`summary` is printed at the end
    of the pytest run."""

    prompts: list[PromptOutcome]
    logits: list[LogitsOutcome]
    structural: list[str]  # layout/tokenizer disagreements (failures)

    def failures(self, tolerance: float = LOGITS_TOLERANCE) -> list[str]:
        out = list(self.structural)
        out += [p.describe() for p in self.prompts if p.status == "mismatch"]
        out += [
            f"[{lo.run}] prompt {_short(lo.prompt)}: logits differ by up to {lo.worst:.3g} "
            f"(prompt's last position {lo.prompt_last:.3g}, all positions "
            f"{lo.all_positions:.3g}, our cached path {lo.cached:.3g}; tolerance {tolerance:g}; "
            f"largest |logit| {lo.max_abs_logit:.3g})"
            for lo in self.logits
            if not lo.worst <= tolerance  # NaN fails too
        ]
        by_run: dict[str, list[PromptOutcome]] = {}
        for p in self.prompts:
            by_run.setdefault(p.run, []).append(p)
        for run_name, rows in by_run.items():
            matched = sum(p.status == "match" for p in rows)
            if matched * 2 <= len(rows):
                out.append(
                    f"[{run_name}] only {matched}/{len(rows)} prompts matched exactly: "
                    f"padding-band differences are expected now and then, not on most prompts"
                )
        return out

    def summary(self) -> str:
        lines = ["trainer compatibility (gpt-simple-lm 0.1.2 vs our torch backend, fp32 CPU):"]
        for run_name in dict.fromkeys(p.run for p in self.prompts):
            rows = [p for p in self.prompts if p.run == run_name]
            counts = {s: sum(p.status == s for p in rows) for s in ("match", "padding-band")}
            eos = sum(p.ended_with_eos for p in rows)
            worst = max((lo.worst for lo in self.logits if lo.run == run_name), default=0.0)
            lines.append(
                f"  {run_name}: {counts['match']}/{len(rows)} prompts identical (API and CLI), "
                f"{counts['padding-band']} padding-band, {eos} ended with EOS; "
                f"max |logit diff| {worst:.2e}"
            )
        lines += [f"  {p.describe()}" for p in self.prompts if p.status != "match"]
        lines += [f"  FAIL {s}" for s in self.structural]
        return "\n".join(lines)


def compare(
    run_names: Sequence[str],
    trainer: Mapping[str, Any],
    trainer_logits: Mapping[str, np.ndarray],
    ours: Mapping[str, Any],
    ours_logits: Mapping[str, np.ndarray],
    cli: Mapping[str, Sequence[Mapping[str, Any]]],
) -> Report:
    """Compare everything the three tools wrote. Pure: the self-tests feed it altered copies."""
    prompts: list[PromptOutcome] = []
    logits: list[LogitsOutcome] = []
    structural: list[str] = []
    for run_index, run_name in enumerate(run_names):
        t_run, o_run = trainer["runs"][run_index], ours["runs"][run_index]
        size, vocab = t_run["tokenizer_size"], t_run["model_config"]["vocab_size"]
        eos, pad = t_run["eos_id"], t_run["pad_id"]
        forbidden = {pad, *range(size, vocab)} - {None}
        structural += _structural(run_name, t_run, o_run)
        for prompt_index, row in enumerate(t_run["rows"]):
            prompt, new_ids = row["prompt"], row["new_ids"]
            ended = bool(new_ids) and new_ids[-1] == eos
            text = row["text"]
            expected = text[: -len(EOS_TEXT)] if ended and text.endswith(EOS_TEXT) else text
            record = o_run["records"][prompt_index]
            cli_record = cli[run_name][prompt_index]
            outcome = PromptOutcome(
                run=run_name,
                prompt=prompt,
                trainer_text=text,
                expected=expected,
                api_text=record.get("completion", f"<error {record.get('error')}>"),
                cli_text=cli_record.get("completion", f"<error {cli_record.get('error')}>"),
                trainer_ids=new_ids,
                forbidden_ids=[i for i in new_ids if i in forbidden],
                ended_with_eos=ended,
            )
            _judge(outcome, record, cli_record, o_run["prompt_ids"][prompt_index], row)
            prompts.append(outcome)

            key = f"{run_index}/{prompt_index}"
            t, o, c = trainer_logits[key], ours_logits[key], ours_logits[f"{key}/cached"]
            last = len(row["prompt_ids"]) - 1
            logits.append(
                LogitsOutcome(
                    run=run_name,
                    prompt=prompt,
                    prompt_last=_max_diff(t[last], o[last]),
                    all_positions=_max_diff(t, o),
                    cached=_max_diff(t[last:], c),
                    max_abs_logit=float(np.abs(t).max()),
                )
            )
    return Report(prompts, logits, structural)


def _short(text: str, limit: int = 60) -> str:
    """A prompt for a message: repr, long ones cut (the full text is in the work folder)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max absolute difference; a shape mismatch or a non-finite value on either side is
    infinitely far (NaN would otherwise slip through ``max`` and ``<=``)."""
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _structural(run_name: str, t_run: Mapping[str, Any], o_run: Mapping[str, Any]) -> list[str]:
    """What both sides must agree on before any text: tokenizer size, EOS, the pad id being
    excluded from generation, and the spec's vocab rounding."""
    problems = []
    size, vocab = t_run["tokenizer_size"], t_run["model_config"]["vocab_size"]
    if vocab != (size + 127) // 128 * 128:
        problems.append(
            f"[{run_name}] trainer vocab_size {vocab} is not its tokenizer size {size} rounded "
            f"up to a multiple of 128, as the spec says"
        )
    if o_run["tokenizer_size"] != size:
        problems.append(
            f"[{run_name}] tokenizer size: ours {o_run['tokenizer_size']}, trainer {size}"
        )
    if o_run["eos_id"] != t_run["eos_id"]:
        problems.append(f"[{run_name}] EOS id: ours {o_run['eos_id']}, trainer {t_run['eos_id']}")
    if t_run["pad_id"] is not None and t_run["pad_id"] not in o_run["never_generate"]:
        problems.append(
            f"[{run_name}] the trainer's pad id {t_run['pad_id']} is not in our never_generate "
            f"{o_run['never_generate']}"
        )
    return problems


def _judge(
    outcome: PromptOutcome,
    record: Mapping[str, Any],
    cli_record: Mapping[str, Any],
    our_prompt_ids: Sequence[int],
    row: Mapping[str, Any],
) -> None:
    problems = outcome.problems
    if list(our_prompt_ids) != row["prompt_ids"]:
        problems.append(f"prompt ids differ: ours {our_prompt_ids}, trainer {row['prompt_ids']}")
    if outcome.forbidden_ids:
        # We never generate these ids, so from the first one on the two continuations differ
        # by design. Up to it they must agree: the trainer's text up to that token is a prefix
        # of ours (decoded from its ids, since the band decodes to nothing).
        outcome.status = "padding-band"
        prefix = row.get("text_before_forbidden", "")
        for name, text in (("API", outcome.api_text), ("CLI", outcome.cli_text)):
            if not text.startswith(prefix):
                problems.append(
                    f"our {name} text does not start with the trainer's text before its first "
                    f"never-generated id ({prefix!r})"
                )
        if problems:
            outcome.status = "mismatch"
        return
    for name, text in (("API", outcome.api_text), ("CLI", outcome.cli_text)):
        if text != outcome.expected:
            at = next(
                (i for i, (a, b) in enumerate(zip(text, outcome.expected, strict=False)) if a != b),
                min(len(text), len(outcome.expected)),
            )
            problems.append(f"our {name} text differs from the trainer's from character {at}")
    want_tokens = len(row["new_ids"]) - outcome.ended_with_eos
    want_reason = "eos" if outcome.ended_with_eos else "length"
    for name, rec in (("API", record), ("CLI", cli_record)):
        meta = rec.get("meta", {})
        if meta.get("completion_tokens") != want_tokens:
            problems.append(
                f"our {name} completion_tokens {meta.get('completion_tokens')}, trainer "
                f"generated {want_tokens} (EOS not counted)"
            )
        if meta.get("finish_reason") != want_reason:
            problems.append(
                f"our {name} finish_reason {meta.get('finish_reason')!r}, expected {want_reason!r}"
            )
    if problems:
        outcome.status = "mismatch"
