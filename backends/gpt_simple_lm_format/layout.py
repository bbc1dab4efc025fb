"""The gpt-simple trainer's on-disk layout: resolving and checking a checkpoint or run directory.

A checkpoint directory holds ``model/config.json``; a run directory holds ``checkpoints/`` whose
latest completed checkpoint is chosen by the trainer's ``resume: auto`` rule (see
``docs/checkpoints.md``).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import attrs

from gpt_simple.plugins import CheckpointError, CheckpointInfo, TokenizerError
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_lm_format.tokenizer import HFTokenizer, check_tokenizer_folder

FORMAT = "gpt-simple"
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
COMPILE_PREFIX = "_orig_mod."


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "model" / "config.json").is_file()


def is_run_dir(path: Path) -> bool:
    """A folder with ``checkpoints/`` that holds gpt-simple saves (not HipGPT run folders)."""
    folder = path / "checkpoints"
    if not folder.is_dir():
        return False
    if (path / "config.json").is_file() or (path / "tokenizer").is_dir():
        return True
    for child in folder.iterdir():
        name = child.name
        if child.is_dir() and (
            name == "final"
            or name.startswith("checkpoint-")
            or name.endswith(".partial")
            or (child / "trainer_state.json").is_file()
        ):
            return True
    return False


@attrs.frozen
class _Candidate:
    path: Path
    step: int

    @property
    def sort_key(self) -> tuple[bool, int, str]:
        # The trainer sorts `final` last whatever its step; ties break by name (ours).
        return (self.path.name == "final", self.step, self.path.name)


def read_trainer_state(path: Path) -> dict | None:
    """``trainer_state.json`` if it parses with schema_version 1 and an integer step."""
    try:
        # Python's json accepts the bare `Infinity` the trainer may write.
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("schema_version") != 1:
        return None
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return state


def select_checkpoint(run_dir: Path) -> tuple[Path, int, str]:
    """The latest completed checkpoint of ``run_dir``: (path, step, why it was picked)."""
    candidates: list[_Candidate] = []
    skipped: list[str] = []
    for child in sorted((run_dir / "checkpoints").iterdir()):
        if not child.is_dir():
            continue
        if child.name.endswith(".partial"):
            skipped.append(f"{child.name} (save in progress)")
            continue
        state = read_trainer_state(child / "trainer_state.json")
        if state is None:
            skipped.append(f"{child.name} (no valid trainer_state.json)")
            continue
        candidates.append(_Candidate(child, state["step"]))
    if not candidates:
        detail = f"; skipped: {', '.join(skipped)}" if skipped else ""
        raise CheckpointError(
            f"run directory has no completed checkpoint: {run_dir / 'checkpoints'}{detail}"
        )
    candidates.sort(key=lambda c: c.sort_key)
    chosen = candidates[-1]
    if chosen.path.name == "final":
        because = f"'final' in run directory {run_dir} (the trainer prefers it over any step)"
    else:
        because = f"latest completed checkpoint in run directory {run_dir} (step {chosen.step})"
        ties = [c.path.name for c in candidates[:-1] if c.step == chosen.step]
        if ties:
            because += f"; tie on step with {', '.join(ties)} broken by name"
    if skipped:
        because += f"; skipped {', '.join(skipped)}"
    return chosen.path, chosen.step, because


def find_weights(checkpoint: Path) -> Path:
    """``model/model.safetensors`` (preferred) or ``model/pytorch_model.bin``."""
    tried = [checkpoint / "model" / SAFETENSORS, checkpoint / "model" / TORCH_BIN]
    for path in tried:
        if path.is_file():
            return path
    raise CheckpointError(
        f"no weights in checkpoint {checkpoint}: tried {', '.join(str(p) for p in tried)}"
    )


def find_tokenizer(checkpoint: Path, override: Path | None) -> Path:
    """The tokenizer folder: the override, ``<ckpt>/tokenizer``, else the run's ``tokenizer``."""
    if override is not None:
        folder = override.parent if override.name == "tokenizer.json" else override
        check_tokenizer_folder(folder)
        return folder
    tried = [checkpoint / "tokenizer", checkpoint.parent.parent / "tokenizer"]
    for folder in tried:
        if (folder / "tokenizer.json").is_file():
            return folder
    for folder in tried:
        if folder.is_dir():
            check_tokenizer_folder(folder)  # raises with a precise reason
    raise TokenizerError(
        f"no tokenizer for checkpoint {checkpoint}: tried {', '.join(str(p) for p in tried)} "
        f"(pass a tokenizer folder explicitly; there is no fallback to a hub tokenizer)"
    )


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file (a few KB read; no weights)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    header.pop("__metadata__", None)
    return header


def check_safetensors_shapes(path: Path, config: ModelConfig) -> None:
    """Compare the file's tensor names and shapes with what the config implies."""
    expected = config.state_dict_shapes()
    found = {
        key.removeprefix(COMPILE_PREFIX): tuple(entry.get("shape", ()))
        for key, entry in read_safetensors_header(path).items()
    }
    problems = describe_state_dict_mismatch(expected, found)
    if problems:
        raise CheckpointError(f"{path} does not match its model config: {problems}")


def describe_state_dict_mismatch(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> str:
    """A one-line summary of missing, unexpected and mis-shaped keys ("" when they agree)."""
    parts = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing:
        parts.append(f"missing keys {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        parts.append(f"unexpected keys {', '.join(unexpected[:8])}{more}")
    for key in wrong[:8]:
        parts.append(f"{key} has shape {list(found[key])}, config implies {list(expected[key])}")
    return "; ".join(parts)


def check_tokenizer(
    tokenizer_dir: Path, config: ModelConfig, checkpoint: Path
) -> tuple[int | None, dict[str, Any], list[str]]:
    """Load the tokenizer and check that it fits ``config``: (EOS id, details for
    :class:`CheckpointInfo`, plan warnings). A tokenizer larger than the model's vocabulary
    belongs to another model and raises :class:`CheckpointError`. Shared with formats derived
    from gpt-simple checkpoints (e.g. ONNX exports), which carry the same config and tokenizer.
    """
    tok = HFTokenizer(tokenizer_dir)
    details: dict[str, Any] = {
        "tokenizer_size": len(tok),
        "max_token_bytes": tok.max_token_bytes(),
    }
    warnings: list[str] = []
    if len(tok) > config.vocab_size:
        raise CheckpointError(
            f"tokenizer {tokenizer_dir} has {len(tok)} tokens but the model's vocab_size is "
            f"{config.vocab_size}: this tokenizer does not belong to checkpoint {checkpoint}"
        )
    if config.vocab_size != 128 * math.ceil(len(tok) / 128):
        warnings.append(
            f"vocab_size {config.vocab_size} is not the tokenizer size {len(tok)} rounded up "
            f"to 128: check that tokenizer {tokenizer_dir} belongs to this checkpoint"
        )
    if tok.eos_token_id is None:
        warnings.append("the tokenizer has no EOS token: records finish by length or stop string")
    return tok.eos_token_id, details, warnings


def inspect(path: Path, tokenizer: Path | None, load_tokenizer: bool) -> CheckpointInfo:
    """Resolve and check a gpt-simple checkpoint or run directory (no weights loaded)."""
    selected_because = None
    step = None
    checkpoint = path
    if not is_checkpoint_dir(path):
        checkpoint, step, selected_because = select_checkpoint(path)
        if not is_checkpoint_dir(checkpoint):
            raise CheckpointError(
                f"{checkpoint} was selected ({selected_because}) but has no model/config.json"
            )
    config = ModelConfig.from_file(checkpoint / "model" / "config.json")
    weights = find_weights(checkpoint)
    if weights.name == SAFETENSORS:
        check_safetensors_shapes(weights, config)
    if step is None:
        state = read_trainer_state(checkpoint / "trainer_state.json")
        step = state["step"] if state else None
    tokenizer_dir = find_tokenizer(checkpoint, tokenizer)
    eos_id, details, warnings = (
        check_tokenizer(tokenizer_dir, config, checkpoint) if load_tokenizer else (None, {}, [])
    )
    return CheckpointInfo(
        format=FORMAT,
        path=checkpoint,
        tokenizer=tokenizer_dir,
        step=step,
        selected_because=selected_because,
        weights=weights,
        param_count=config.param_count(),
        context_length=config.n_positions,
        eos_id=eos_id,
        config=config.to_dict(),
        warnings=tuple(warnings),
        details=details,
    )
