"""The scenarios of issue 7, each tool in its own process, results as rows of one table.

1. single stream: tokens/s at batch 1 on a GPT-2-small-shaped model, beside the READ-bandwidth
   floor;
2. eval sweep: end-to-end wall time of ``gpt-simple batch-generate`` vs transformers;
3. multi-model sweep: the same records over 3 checkpoints, interleaved;
4. pre-flight: ``--dry-run`` over 100,000 records and 10 checkpoints;
5. load: peak RSS growth while loading the GPT-2-small checkpoint;
6. contention: the sweep again with one core kept busy, and torch's naive defaults;
7. int8/int4: single stream through weight-only int8 and int4 ONNX exports, beside llama.cpp's
   Q8_0 and Q4_0, with the logits drift and greedy agreement on the builtin model;
8. scale-out: the multi-model records as 2 shards side by side, merged, vs 1 process.

llama.cpp (``llama-cpp-python`` and ``gguf``, optional) joins 1 and 2 on the same weights as
GGUF (``benchmarks/gguf_export.py``, ``benchmarks/workers/llama_cpp.py``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks import models
from benchmarks.machine import REPO, BusyCore, Measured, run_tool, tool_env

#: ``gpt-simple`` in a fresh interpreter (the console script may not be on PATH).
CLI = "import sys; from gpt_simple_core.cli.main import main; sys.exit(main(sys.argv[1:]))"
#: The same, but torch imported first with its defaults: the OpenMP runtime spins at
#: barriers and gpt-simple's torch plugin can no longer ask it not to.
NAIVE_CLI = "import torch; " + CLI
#: A dry-run that reports on stderr which runtimes it imported.
DRY_RUN = (
    "import json, sys; from gpt_simple_core.cli.main import main; code = main(sys.argv[1:]); "
    "print(json.dumps({'torch': 'torch' in sys.modules, "
    "'onnxruntime': 'onnxruntime' in sys.modules, 'code': code}))"
)
TOOL_TIMEOUT = 1800.0
#: transformers runs with torch's defaults except the OpenMP wait policy, which is set as our
#: torch backend sets it (it only matters when another process holds a core).
COMPETITOR_ENV = tool_env(OMP_WAIT_POLICY="PASSIVE")


@attrs.frozen
class Profile:
    """How much of each scenario to run."""

    name: str
    sweep_records: int
    static_batches: tuple[int, ...]
    batch1_records: int  # transformers at batch 1 runs on this many records, then scales
    single_repeats: int
    naive_records: int
    naive_timeout: float
    preflight_records: int = 100_000
    preflight_checkpoints: int = 10
    models: int = 3


PROFILES = {
    "quick": Profile(
        "quick",
        sweep_records=64,
        static_batches=(16,),
        batch1_records=16,
        single_repeats=2,
        naive_records=16,
        naive_timeout=120,
    ),
    "full": Profile(
        "full",
        sweep_records=512,
        static_batches=(8, 16, 32),
        batch1_records=64,
        single_repeats=3,
        naive_records=48,
        naive_timeout=600,
    ),
}


@attrs.define
class Row:
    """One line of the results table."""

    scenario: str
    what: str
    value: float | None
    unit: str
    ratio: float | None = None
    ratio_label: str = ""
    target: str = ""
    met: bool | None = None
    background: float | None = None
    note: str = ""


#: The rows' note when llama.cpp's peer cannot run; benchmarks/README.md says how to build it.
LLAMA_CPP_MISSING = 'llama-cpp-python/gguf: see benchmarks/README.md, "llama.cpp"'


def llama_cpp_installed() -> bool:
    """Whether ``llama-cpp-python`` and ``gguf`` are importable (nothing is imported)."""
    return all(importlib.util.find_spec(n) for n in ("llama_cpp", "gguf"))


def onnx_installed() -> bool:
    """Whether the onnx backend and its runtime are importable (nothing is imported)."""
    return all(importlib.util.find_spec(n) for n in ("gpt_simple_onnx", "onnxruntime"))


class Suite:
    """Runs the scenarios of one profile; ``rows`` collects the table."""

    def __init__(self, profile: Profile, log: Path, scenarios: Sequence[int]) -> None:
        self.profile = profile
        self.log = log
        self.scenarios = set(scenarios)
        self.rows: list[Row] = []
        self.facts: dict[str, Any] = {}  # figures later scenarios reuse
        self.backends = ["torch", *(["onnx"] if onnx_installed() else [])]
        self.work = models.WORK / "runs" / profile.name
        self.work.mkdir(parents=True, exist_ok=True)

    # Running tools ---------------------------------------------------------------------------
    def tool(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Measured:
        """A tool in its own interpreter (``argv`` without the interpreter)."""
        measured = run_tool([sys.executable, *argv], env=env, timeout=TOOL_TIMEOUT, log=self.log)
        if not measured.ok:
            print(f"  ! {' '.join(argv[:3])} failed (rc {measured.returncode}); see {self.log}")
        return measured

    def worker(self, module: str, *args: str, env: dict[str, str] | None = None) -> Measured:
        return self.tool(["-m", f"benchmarks.workers.{module}", *args], env=env)

    def transformers(self, *args: str) -> Measured:
        """The transformers worker, with torch's defaults but the wait policy ours uses, so
        the comparison is between engines; scenario 6 shows what the policy is worth."""
        return self.worker("transformers_llama", *args, env=COMPETITOR_ENV)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = "-" if row.value is None else f"{row.value:.4g} {row.unit}"
        ratio = f"  {row.ratio:.2f}x {row.ratio_label}" if row.ratio is not None else ""
        print(f"  {row.scenario:<14} {row.what:<44} {shown}{ratio} {row.note}", flush=True)
        return row

    def not_installed(
        self, scenario: str, what: str, missing: str = "gpt_simple_onnx/onnxruntime"
    ) -> None:
        self.add(Row(scenario, what, None, "", note=f"not installed ({missing})"))

    def run(self) -> None:
        steps: list[tuple[int, Callable[[], None]]] = [
            (1, self.single_stream),
            (2, self.sweep),
            (3, self.multi_model),
            (4, self.preflight),
            (5, self.load),
            (6, self.contention),
            (7, self.int8),
            (8, self.scale_out),
        ]
        for number, step in steps:
            if number in self.scenarios:
                print(f"[{number}] {step.__doc__.splitlines()[0]}", flush=True)
                step()

    # Artefacts -------------------------------------------------------------------------------
    def hf_folder(self, checkpoint: Path) -> Path:
        """The transformers Llama folder holding ``checkpoint``'s weights (converted once)."""
        folder = models.WORK / "hf" / checkpoint.name
        if not (folder / "config.json").is_file():
            partial = folder.with_name(folder.name + ".partial")
            self.worker("transformers_llama", "convert", str(checkpoint), str(partial))
            partial.rename(folder)
        return folder

    def onnx_export(self, checkpoint: Path, quantize: str | None = None) -> Path | None:
        """``gpt-simple export`` of ``checkpoint`` (once; reused by later runs)."""
        folder = models.WORK / "onnx" / f"{checkpoint.name}-{quantize or 'fp32'}"
        if (folder / "manifest.json").is_file():
            if _export_is_current(folder, quantize):
                return folder
            shutil.rmtree(folder)  # quantized by an older scheme: measure today's
        partial = folder.with_name(folder.name + ".partial")
        extra = ["--quantize", quantize] if quantize else []
        args = ["export", str(checkpoint), "--format", "onnx", "--out", str(partial), *extra]
        if not self.tool(["-c", CLI, *args]).ok:
            return None
        partial.rename(folder)
        return folder

    # 1. Single stream --------------------------------------------------------------------------
    def single_stream(self) -> None:
        """Single stream: greedy tok/s at batch 1, GPT-2-small shape (32-token prompt, 128 new)."""
        checkpoint = models.checkpoint(models.GPT2_SMALL)
        weights = models.weight_bytes(checkpoint)
        bandwidth = self.worker("bandwidth")
        floor = bandwidth.answer["bytes_per_s"] / weights if bandwidth.ok else None
        self.facts["floor"] = floor
        self.add(
            Row(
                "1 single",
                "floor: weight bytes / READ bandwidth",
                floor,
                "tok/s",
                background=bandwidth.background,
                note=f"{bandwidth.answer.get('bytes_per_s', 0) / 1e9:.1f} GB/s, "
                f"{weights / 1e6:.0f} MB/step",
            )
        )
        repeats = str(self.profile.single_repeats)
        hf = self.transformers("single", str(self.hf_folder(checkpoint)), "--repeats", repeats)
        baseline = hf.answer.get("tokens_per_s")
        self.add(
            Row(
                "1 single",
                "transformers LlamaForCausalLM.generate",
                baseline,
                "tok/s",
                background=hf.background,
                note=f"{hf.answer.get('threads')} threads",
            )
        )
        for backend in self.backends:
            target = checkpoint if backend == "torch" else self.onnx_export(checkpoint)
            if target is None:
                continue
            ours = self.worker(
                "gpt_simple_api", "single", str(target), "--backend", backend, "--repeats", repeats
            )
            speed = ours.answer.get("tokens_per_s")
            self.facts[f"single_{backend}"] = speed
            self.add(_versus("1 single", f"gpt-simple {backend}", speed, baseline, ours, 1.0))
            if speed and floor:
                fraction = speed / floor
                self.add(
                    Row(
                        "1 single",
                        f"gpt-simple {backend}: share of the floor",
                        100 * fraction,
                        "%",
                        target=">= 80%",
                        met=fraction >= 0.8,
                        background=ours.background,
                    )
                )
        if "onnx" not in self.backends:
            self.not_installed("1 single", "gpt-simple onnx")
        self.llama_cpp_single(checkpoint, repeats)

    def llama_cpp_single(self, checkpoint: Path, repeats: str) -> None:
        """llama.cpp at batch 1 on the same weights as GGUF F32, Q8_0 and Q4_0, once its F32
        logits are shown to match our torch backend's (else its figures would be of another
        model)."""
        variants = {"f32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0"}
        if not llama_cpp_installed():
            for name in variants.values():
                self.not_installed("1 single", f"llama.cpp {name}", LLAMA_CPP_MISSING)
            return
        check = self.worker("llama_cpp", "check", str(checkpoint))
        a = check.answer
        self.add(
            Row(
                "1 single",
                "llama.cpp F32 vs gpt-simple torch: max |dlogit|",
                a.get("max_abs_diff"),
                "",
                target="<= 1e-3, same greedy",
                met=bool(a.get("ok")),
                background=check.background,
                note=f"greedy tokens agree {a.get('greedy_agree')}/{a.get('steps')}"
                if check.ok
                else "check failed",
            )
        )
        if not a.get("ok"):
            return
        speeds: dict[str, float | None] = {}
        for variant, name in variants.items():
            m = self.worker(
                "llama_cpp", "single", str(checkpoint), "--variant", variant, "--repeats", repeats
            )
            speeds[variant] = m.answer.get("tokens_per_s")
            size = m.answer.get("file_bytes", 0) / 1e6
            note = f"{m.answer.get('threads')} threads, {size:.0f} MB" if m.ok else "failed"
            if m.ok and variant == "f32":
                note += f", llama-cpp-python {m.answer.get('version')}"
            self.add(
                Row(
                    "1 single",
                    f"llama.cpp {name}",
                    speeds[variant],
                    "tok/s",
                    note=note,
                    background=m.background,
                )
            )
        self.facts["single_llama_cpp"] = speeds
        ours = {b: self.facts.get(f"single_{b}") for b in self.backends}
        ours = {b: s for b, s in ours.items() if s}
        reference = speeds["f32"]
        if ours and reference:
            best = max(ours, key=lambda b: ours[b])
            ratio = ours[best] / reference
            self.add(
                Row(
                    "1 single",
                    f"gpt-simple best fp32 ({best}) vs llama.cpp F32",
                    ours[best],
                    "tok/s",
                    ratio=ratio,
                    ratio_label="vs llama.cpp F32",
                    target=">= 1.1x",
                    met=ratio >= 1.1,
                )
            )

    # 2. Eval sweep -----------------------------------------------------------------------------
    def sweep_records(self) -> tuple[Path, list[dict[str, Any]]]:
        records = models.sweep_records(
            self.profile.sweep_records, tokenizer_size=models.MID.tokenizer_size
        )
        return models.write_jsonl(self.work / "sweep.jsonl", records), records

    def gpt_simple_sweep(
        self,
        records_file: Path,
        expected_tokens: int,
        *flags: str,
        cli: str = CLI,
        timeout: float | None = None,
    ) -> Measured:
        """``gpt-simple batch-generate`` end to end; the output is checked for the work done."""
        output = self.work / "out.jsonl"
        output.unlink(missing_ok=True)
        argv = [sys.executable, "-c", cli, "batch-generate", "--input", str(records_file)]
        argv += ["--output", str(output), *flags]
        measured = run_tool(argv, timeout=timeout or TOOL_TIMEOUT, log=self.log)
        produced = _completion_tokens(output)
        if measured.ok and produced != expected_tokens:
            print(f"  ! expected {expected_tokens} tokens, got {produced}")
            measured = attrs.evolve(measured, returncode=-1)
        return measured

    def sweep(self) -> None:
        """Eval sweep: end-to-end wall time, mixed prompts 8..128 and max_new_tokens 16..128."""
        checkpoint = models.checkpoint(models.MID)
        records_file, records = self.sweep_records()
        tokens = sum(r["generation"]["max_new_tokens"] for r in records)
        label = f"{len(records)} records, {tokens} new tokens"
        # transformers: static batches, then batch 1
        hf = self.hf_folder(checkpoint)
        tokenizer = checkpoint / "tokenizer" / "tokenizer.json"
        static: dict[int, Measured] = {}
        for size in self.profile.static_batches:
            static[size] = self.transformers(
                "sweep",
                str(hf),
                str(records_file),
                "--tokenizer",
                str(tokenizer),
                "--batch-size",
                str(size),
            )
            m = static[size]
            computed = m.answer.get("computed_tokens", 0)
            self.add(
                Row(
                    "2 sweep",
                    f"transformers static batches of {size}",
                    m.wall if m.ok else None,
                    "s",
                    background=m.background,
                    note=f"computes {computed / max(tokens, 1):.2f}x the tokens asked",
                )
            )
        ok = {size: m for size, m in static.items() if m.ok}
        best_size = min(ok, key=lambda s: ok[s].wall) if ok else None
        best_static = ok[best_size].wall if best_size else None
        batch1 = self.transformers_batch1(hf, tokenizer, records)
        # ours
        walls: dict[str, Measured] = {}
        for backend in self.backends:
            target = checkpoint if backend == "torch" else self.onnx_export(checkpoint)
            if target is None:
                continue
            m = self.gpt_simple_sweep(records_file, tokens, "--checkpoint", str(target))
            walls[backend] = m
            self.add(
                Row(
                    "2 sweep",
                    f"gpt-simple batch-generate, {backend}",
                    m.wall if m.ok else None,
                    "s",
                    ratio=best_static / m.wall if best_static and m.ok else None,
                    ratio_label="vs best static",
                    background=m.background,
                    note=f"{tokens / m.wall:.0f} tok/s" if m.ok else "failed",
                )
            )
        if "onnx" not in self.backends:
            self.not_installed("2 sweep", "gpt-simple batch-generate, onnx")
        done = {b: m for b, m in walls.items() if m.ok}
        self.llama_cpp_sweep(checkpoint, records_file, tokens, done)
        if not done:
            return
        best = min(done, key=lambda b: done[b].wall)
        self.facts["sweep"] = done["torch"].wall if "torch" in done else None
        self.facts["sweep_backend_best"] = best
        wall = done[best].wall
        self.add(
            Row(
                "2 sweep",
                f"gpt-simple best ({best}) vs static (best: batch {best_size})",
                wall,
                "s",
                ratio=best_static / wall if best_static else None,
                ratio_label="faster",
                target=">= 2.5x",
                met=best_static / wall >= 2.5 if best_static else None,
                background=done[best].background,
                note=label,
            )
        )
        self.add(
            Row(
                "2 sweep",
                f"gpt-simple best ({best}) vs transformers batch 1",
                wall,
                "s",
                ratio=batch1 / wall if batch1 else None,
                ratio_label="faster",
                target=">= 5x",
                met=batch1 / wall >= 5 if batch1 else None,
                background=done[best].background,
            )
        )

    def llama_cpp_sweep(
        self, checkpoint: Path, records_file: Path, tokens: int, ours: dict[str, Measured]
    ) -> None:
        """llama.cpp F32 on the same records, several sequences per ``llama_decode``
        (continuous batching over N slots, as llama-server does; N = the largest static batch,
        one run to keep the profile's time), end to end like our sweep; ``ours`` are our
        finished sweeps, for the ratio."""
        if not llama_cpp_installed():
            self.not_installed("2 sweep", "llama.cpp batched", LLAMA_CPP_MISSING)
            return
        # the GGUF is written first, so the timed runs only read it
        if not self.tool(["-m", "benchmarks.gguf_export", str(checkpoint)]).ok:
            self.add(Row("2 sweep", "llama.cpp batched", None, "s", note="GGUF export failed"))
            return
        slots = max(self.profile.static_batches)
        m = self.worker(
            "llama_cpp", "sweep", str(checkpoint), str(records_file), "--parallel", str(slots)
        )
        if m.ok and m.answer.get("tokens") != tokens:
            print(f"  ! llama.cpp made {m.answer.get('tokens')} tokens, not {tokens}")
            m = attrs.evolve(m, returncode=-1)
        self.add(
            Row(
                "2 sweep",
                f"llama.cpp batched, {slots} slots",
                m.wall if m.ok else None,
                "s",
                background=m.background,
                note=f"{tokens / m.wall:.0f} tok/s, {m.answer.get('decodes')} decodes"
                if m.ok
                else "failed",
            )
        )
        if not m.ok or not ours:
            return
        best = min(ours, key=lambda b: ours[b].wall)
        ratio = m.wall / ours[best].wall
        self.add(
            Row(
                "2 sweep",
                f"gpt-simple best ({best}) vs llama.cpp batched ({slots} slots)",
                ours[best].wall,
                "s",
                ratio=ratio,
                ratio_label="faster",
                target=">= 1.5x",
                met=ratio >= 1.5,
                background=ours[best].background,
            )
        )

    def transformers_batch1(
        self, hf: Path, tokenizer: Path, records: list[dict[str, Any]]
    ) -> float | None:
        """transformers at batch 1 (a one-prompt-at-a-time loop). Its time is a sum over
        records, so a spread subset is run and scaled by the tokens it covers."""
        count = min(self.profile.batch1_records, len(records))
        subset = records[:: max(1, len(records) // count)][:count]
        subset_file = models.write_jsonl(self.work / "batch1.jsonl", subset)
        m = self.transformers(
            "sweep",
            str(hf),
            str(subset_file),
            "--tokenizer",
            str(tokenizer),
            "--batch-size",
            "1",
        )
        if not m.ok:
            self.add(Row("2 sweep", "transformers batch 1", None, "s", note="failed"))
            return None

        def work(rs: list[dict[str, Any]]) -> int:
            return sum(r["generation"]["max_new_tokens"] for r in rs)

        scale = work(records) / work(subset)
        wall = m.wall * scale
        note = "" if count == len(records) else f"{count} records run, scaled x{scale:.2f}"
        self.add(
            Row("2 sweep", "transformers batch 1", wall, "s", background=m.background, note=note)
        )
        return wall

    # 3. Multi-model ----------------------------------------------------------------------------
    def multi_model(self) -> None:
        """Multi-model sweep: the sweep's records over 3 checkpoints, interleaved in the file."""
        checkpoints = [models.checkpoint(models.MID, seed) for seed in range(self.profile.models)]
        names = [str(c) for c in checkpoints]
        records = models.sweep_records(
            self.profile.sweep_records, tokenizer_size=models.MID.tokenizer_size, checkpoints=names
        )
        singles = []
        for name in names:
            mine = [{k: v for k, v in r.items() if k != "model"} for r in records]
            mine = [
                m for m, r in zip(mine, records, strict=True) if r["model"]["checkpoint"] == name
            ]
            path = models.write_jsonl(self.work / f"single-{Path(name).name}.jsonl", mine)
            tokens = sum(r["generation"]["max_new_tokens"] for r in mine)
            singles.append(self.gpt_simple_sweep(path, tokens, "--checkpoint", name))
        total = sum(m.wall for m in singles)
        tokens = sum(r["generation"]["max_new_tokens"] for r in records)
        multi_file = models.write_jsonl(self.work / "multi.jsonl", records)
        multi = self.gpt_simple_sweep(multi_file, tokens)
        loads = multi.stderr.count("] loading ") if multi.ok else 0  # the engine logs each load
        ok = multi.ok and all(m.ok for m in singles)
        self.add(
            Row(
                "3 multi-model",
                f"{len(names)} checkpoints interleaved vs sum of single sweeps",
                multi.wall if ok else None,
                "s",
                ratio=multi.wall / total if ok else None,
                ratio_label="of the sum",
                target="<= 1.1x, each loaded once",
                met=ok and multi.wall <= 1.1 * total and loads == len(names),
                background=max([multi.background] + [m.background for m in singles]),
                note=f"singles {total:.1f} s; {loads} loads",
            )
        )

    # 8. Scale-out -----------------------------------------------------------------------------
    def scale_out(self) -> None:
        """Scale-out: the multi-model records as 2 shards side by side (merged) vs 1 process."""
        checkpoints = [models.checkpoint(models.MID, seed) for seed in range(self.profile.models)]
        records = models.sweep_records(
            self.profile.sweep_records,
            tokenizer_size=models.MID.tokenizer_size,
            checkpoints=[str(c) for c in checkpoints],
        )
        source = models.write_jsonl(self.work / "scale-out.jsonl", records)
        tokens = sum(r["generation"]["max_new_tokens"] for r in records)
        whole = self.gpt_simple_sweep(source, tokens, "--seed", "1")
        reference = (self.work / "out.jsonl").read_bytes() if whole.ok else b""
        started = time.monotonic()
        shards = []
        for index in range(2):
            output = self.work / f"shard-{index}.jsonl"
            output.unlink(missing_ok=True)
            argv = [sys.executable, "-c", CLI, "batch-generate", "--input", str(source)]
            argv += ["--output", str(output), "--seed", "1", "--threads", "1", "--overwrite"]
            argv += ["--shard", f"{index}/2"]
            shards.append(subprocess.Popen(argv, env=tool_env(), stderr=subprocess.PIPE, text=True))
        errors = [proc.communicate()[1] for proc in shards]
        merged = self.work / "merged.jsonl"
        merged.unlink(missing_ok=True)
        outputs = [str(self.work / f"shard-{i}.jsonl") for i in range(2)]
        argv = [sys.executable, "-c", CLI, "merge", *outputs, "--input", str(source)]
        merge = subprocess.run(
            [*argv, "--output", str(merged)], env=tool_env(), capture_output=True, text=True
        )
        wall = time.monotonic() - started
        ok = whole.ok and merge.returncode == 0 and all(p.returncode == 0 for p in shards)
        same = ok and _without_threads(merged.read_bytes()) == _without_threads(reference)
        loads = sum(err.count("] loading ") for err in errors)
        self.add(
            Row(
                "8 scale-out",
                "2 shards side by side (1 thread each) + merge vs 1 process (2 threads)",
                wall if ok else None,
                "s",
                ratio=whole.wall / wall if ok else None,
                ratio_label="vs 1 process",
                background=whole.background,
                note=f"1 process {whole.wall:.1f} s; {loads} loads over the shards; "
                f"merged output {'identical' if same else 'DIFFERENT'}",
            )
        )

    # 4. Pre-flight -----------------------------------------------------------------------------
    def preflight(self) -> None:
        """Pre-flight: --dry-run on 100,000 records over 10 checkpoints."""
        checkpoints = [
            str(models.checkpoint(models.TINY, seed))
            for seed in range(self.profile.preflight_checkpoints)
        ]
        path = self.work / "preflight.jsonl"
        records = models.sweep_records(
            self.profile.preflight_records,
            tokenizer_size=models.TINY.tokenizer_size,
            prompt_tokens=(4, 32),
            checkpoints=checkpoints,
        )
        models.write_jsonl(path, records)
        m = self.tool(["-c", DRY_RUN, "batch-generate", "--input", str(path), "--dry-run"])
        imported = [name for name in ("torch", "onnxruntime") if m.answer.get(name)]
        valid = m.ok and m.answer.get("code") == 0
        self.add(
            Row(
                "4 pre-flight",
                f"--dry-run, {len(records)} records, {len(checkpoints)} checkpoints",
                m.wall if valid else None,
                "s",
                target="< 3 s, no torch",
                met=valid and m.wall < 3 and not imported,
                background=m.background,
                note="imported: " + (", ".join(imported) or "neither torch nor onnxruntime"),
            )
        )

    # 5. Load -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load: peak RSS growth while the torch backend loads the GPT-2-small checkpoint."""
        m = self.worker("gpt_simple_api", "load", str(models.checkpoint(models.GPT2_SMALL)))
        growth, weights = m.answer.get("peak_rss_growth"), m.answer.get("weights")
        ratio = growth / weights if growth and weights else None
        self.add(
            Row(
                "5 load",
                "peak RSS growth / weight bytes",
                growth / 2**20 if growth else None,
                "MiB",
                ratio=ratio,
                ratio_label="of the weights",
                target="<= 1.3x",
                met=ratio is not None and ratio <= 1.3,
                background=m.background,
                note=f"weights {weights / 2**20:.0f} MiB" if weights else "",
            )
        )

    # 6. Contention -----------------------------------------------------------------------------
    def contention(self) -> None:
        """Contention: the sweep with one core kept busy by another process."""
        checkpoint = models.checkpoint(models.MID)
        records_file, records = self.sweep_records()
        tokens = sum(r["generation"]["max_new_tokens"] for r in records)
        quiet = self.facts.get("sweep")
        if quiet is None:
            m = self.gpt_simple_sweep(records_file, tokens, "--checkpoint", str(checkpoint))
            quiet = m.wall if m.ok else None
        with BusyCore():
            busy = self.gpt_simple_sweep(records_file, tokens, "--checkpoint", str(checkpoint))
        self.add(
            Row(
                "6 contention",
                "gpt-simple sweep (defaults), one core busy",
                busy.wall if busy.ok else None,
                "s",
                ratio=busy.wall / quiet if busy.ok and quiet else None,
                ratio_label="slower than quiet",
                target="<= 2.5x",
                met=busy.wall / quiet <= 2.5 if busy.ok and quiet else None,
                background=busy.background,
            )
        )
        # torch's naive defaults on a subset (they may collapse: keep it short)
        subset = records[: self.profile.naive_records]
        subset_file = models.write_jsonl(self.work / "naive.jsonl", subset)
        subset_tokens = sum(r["generation"]["max_new_tokens"] for r in subset)
        runs = {}
        for label, busy_core in (("quiet", False), ("busy", True)):
            flags = ["--checkpoint", str(checkpoint)]
            timeout = self.profile.naive_timeout
            if busy_core:
                with BusyCore():
                    runs[label] = self.gpt_simple_sweep(
                        subset_file, subset_tokens, *flags, cli=NAIVE_CLI, timeout=timeout
                    )
            else:
                runs[label] = self.gpt_simple_sweep(
                    subset_file, subset_tokens, *flags, cli=NAIVE_CLI, timeout=timeout
                )
        q, b = runs["quiet"], runs["busy"]
        killed = b.returncode == -9
        self.add(
            Row(
                "6 contention",
                f"naive torch defaults (spinning OpenMP), {len(subset)} records, one core busy",
                b.wall if (b.ok or killed) else None,
                "s",
                ratio=b.wall / q.wall if q.ok and (b.ok or killed) else None,
                ratio_label="slower than quiet" + (" (at least: killed)" if killed else ""),
                background=b.background,
                note=f"quiet {q.wall:.1f} s" if q.ok else "quiet run failed",
            )
        )

    # 7. int8 and int4 ----------------------------------------------------------------------------
    def int8(self) -> None:
        """Weight-only quantization: single stream through int8 and int4 ONNX exports vs fp32
        torch (and the fp32 export) and vs llama.cpp's Q8_0 / Q4_0 (from scenario 1), with the
        logits drift and the greedy agreement on the builtin model."""
        if "onnx" not in self.backends:
            self.not_installed("7 int8", "gpt-simple onnx int8")
            return
        checkpoint = models.checkpoint(models.GPT2_SMALL)
        repeats = str(self.profile.single_repeats)
        torch_speed = self.facts.get("single_torch")
        if torch_speed is None:
            t = self.worker("gpt_simple_api", "single", str(checkpoint), "--repeats", repeats)
            torch_speed = t.answer.get("tokens_per_s")
        peers = self.facts.get("single_llama_cpp") or {}
        for quantize, target, peer in (("int8", 2.5, "q8_0"), ("int4", 4.0, "q4_0")):
            scenario = f"7 {quantize}"
            folder = self.onnx_export(checkpoint, quantize)
            if folder is None:
                self.add(
                    Row(scenario, f"gpt-simple onnx {quantize}", None, "", note="export failed")
                )
                continue
            m = self.worker("gpt_simple_api", "single", str(folder), "--repeats", repeats)
            speed = m.answer.get("tokens_per_s")
            fp32 = self.facts.get("single_onnx")
            versus_fp32 = f"; {speed / fp32:.2f}x the fp32 export" if speed and fp32 else ""
            notes = [self.drift(checkpoint, folder, quantize), self.agreement(quantize)]
            self.add(
                Row(
                    scenario,
                    f"gpt-simple onnx {quantize} vs torch fp32, batch 1",
                    speed,
                    "tok/s",
                    ratio=speed / torch_speed if speed and torch_speed else None,
                    ratio_label="vs torch fp32",
                    target=f">= {target:g}x",
                    met=speed / torch_speed >= target if speed and torch_speed else None,
                    background=m.background,
                    note="; ".join(notes) + versus_fp32,
                )
            )
            llama = peers.get(peer)
            if speed and llama:
                ratio = speed / llama
                self.add(
                    Row(
                        scenario,
                        f"gpt-simple onnx {quantize} vs llama.cpp {peer.upper()}, batch 1",
                        speed,
                        "tok/s",
                        ratio=ratio,
                        ratio_label=f"vs llama.cpp {peer.upper()}",
                        target=">= 1.0x" if quantize == "int8" else "",
                        met=ratio >= 1.0 if quantize == "int8" else None,
                        background=m.background,
                    )
                )

    def agreement(self, quantize: str) -> str:
        """How long the builtin (trained) model's greedy text stays that of fp32 torch once its
        weights are quantized: the share of tokens before each prompt's first divergence."""
        builtin = models.builtin_checkpoint()
        folder = self.onnx_export(builtin, quantize)
        ref, low = self.work / "greedy-fp32.json", self.work / f"greedy-{quantize}.json"
        a = self.worker("gpt_simple_api", "greedy", str(builtin), str(ref), "--backend", "torch")
        b = self.worker("gpt_simple_api", "greedy", str(folder), str(low)) if folder else None
        if not (a.ok and b is not None and b.ok):
            return "greedy agreement: failed"
        share, same = greedy_agreement(json.loads(ref.read_text()), json.loads(low.read_text()))
        return f"builtin model's greedy text follows fp32 for {share:.0%} of tokens ({same} same)"

    def drift(self, checkpoint: Path, quantized: Path, name: str) -> str:
        """Logits of a quantized export against fp32 torch, over a few greedy steps of torch's."""
        import numpy as np

        ref, low = self.work / "logits-torch.npy", self.work / f"logits-{name}.npy"
        a = self.worker("gpt_simple_api", "logits", str(checkpoint), str(ref))
        b = self.worker("gpt_simple_api", "logits", str(quantized), str(low), "--feed", str(ref))
        if not (a.ok and b.ok):
            return "drift: failed"
        x, y = np.load(ref), np.load(low)
        diff = float(np.abs(x - y).max())
        scale = float(np.abs(x).max())
        agree = float((x.argmax(1) == y.argmax(1)).mean())
        return f"drift: max |dlogit| {diff:.3g} (max |logit| {scale:.3g}), top-1 agrees {agree:.0%}"


def greedy_agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, str]:
    """(share of tokens before each sequence's first divergence, "k/n" sequences identical)."""
    agreed = total = same = 0
    for ours, theirs in zip(reference, other, strict=True):
        pairs = enumerate(zip(ours, theirs, strict=True))
        prefix = next((i for i, (a, b) in pairs if a != b), len(ours))
        agreed, total, same = agreed + prefix, total + len(ours), same + (prefix == len(ours))
    return agreed / max(total, 1), f"{same}/{len(reference)}"


def _export_is_current(folder: Path, quantize: str | None) -> bool:
    """Whether an export folder was quantized (or not) as ``gpt-simple export`` does today."""
    from gpt_simple_onnx.layout import WEIGHT_ONLY

    manifest = json.loads((folder / "manifest.json").read_text())
    expected = WEIGHT_ONLY[quantize].as_dict() if quantize else None
    return manifest.get("quantization_scheme") == expected


def _versus(
    scenario: str, what: str, speed: float | None, baseline: float | None, m: Measured, at: float
) -> Row:
    ratio = speed / baseline if speed and baseline else None
    return Row(
        scenario,
        what,
        speed,
        "tok/s",
        ratio=ratio,
        ratio_label="vs transformers",
        target=f">= {at:.1f}x",
        met=ratio >= at if ratio is not None else None,
        background=m.background,
        note=f"{m.answer.get('threads')} threads" if m.ok else "failed",
    )


def _completion_tokens(output: Path) -> int:
    """Completion tokens of a finished output file (0 when missing)."""
    if not output.is_file():
        return 0
    total = 0
    for line in output.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "completion" in record:
            total += record["meta"]["completion_tokens"]
    return total


__all__ = [
    "PROFILES",
    "REPO",
    "Profile",
    "Row",
    "Suite",
    "llama_cpp_installed",
    "onnx_installed",
    "tool_env",
]


def _without_threads(output: bytes) -> list[dict]:
    """Output records without ``meta.notes.threads``: the shards run one thread each and the
    whole run two, which is all that may differ between them."""
    records = [json.loads(line) for line in output.splitlines()]
    for record in records:
        record.get("meta", {}).get("notes", {}).pop("threads", None)
    return records
