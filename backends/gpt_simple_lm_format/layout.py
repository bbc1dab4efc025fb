"""The gpt-simple trainer's on-disk layout: resolving and checking a checkpoint or run directory.

A checkpoint directory holds ``model/config.json``; a run directory holds ``checkpoints/`` whose
latest completed checkpoint is chosen by the trainer's ``resume: auto`` rule (see
``docs/checkpoints.md``).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import attrs

from gpt_simple.plugins import (
    CheckpointError,
    CheckpointInfo,
    TokenizerError,
    loads_json,
    read_json,
)
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
        state = read_json(path)
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
    path, step, because, _ = select_checkpoint_warning(run_dir)
    return path, step, because


def select_checkpoint_warning(run_dir: Path) -> tuple[Path, int, str, tuple[str, ...]]:
    """:func:`select_checkpoint`, and warnings about sibling checkpoints skipped because their
    ``trainer_state.json`` is there but unreadable (damaged: worth a look, not a failure)."""
    candidates: list[_Candidate] = []
    skipped: list[str] = []
    damaged: list[str] = []
    for child in sorted((run_dir / "checkpoints").iterdir()):
        if not child.is_dir():
            continue
        if child.name.endswith(".partial"):
            skipped.append(f"{child.name} (save in progress)")
            continue
        state = read_trainer_state(child / "trainer_state.json")
        if state is None:
            skipped.append(f"{child.name} (no valid trainer_state.json)")
            if (child / "trainer_state.json").is_file():
                damaged.append(child.name)
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
    warnings = tuple(
        f"skipped checkpoint {run_dir / 'checkpoints' / name}: its trainer_state.json is not "
        f"a valid trainer state (damaged?)"
        for name in damaged
    )
    return chosen.path, chosen.step, because, warnings


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


#: Bytes per element of the safetensors dtypes (sub-byte and unknown ones: sizes unchecked).
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
#: A header longer than this is not a model's tensor table.
MAX_SAFETENSORS_HEADER = 100_000_000


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file, checked: every entry names a dtype, a shape and
    byte offsets that agree, and the file holds every tensor's bytes (a truncated copy is
    refused here, not when loading). Reads the header only (a few KB; no weights)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"the file has {len(head)} bytes, too few for a header")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_SAFETENSORS_HEADER, size - 8):
                raise ValueError(f"header length {length:,} is implausible (file: {size:,} bytes)")
            header = loads_json(f.read(length))
        entries = _tensor_entries(header, data_bytes=size - 8 - length)
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    return entries


def _tensor_entries(header: Any, data_bytes: int) -> dict[str, dict]:
    """``header`` without ``__metadata__``, every entry checked; ``ValueError`` says which."""
    if not isinstance(header, dict):
        raise ValueError(f"the header is {type(header).__name__}, not an object of tensors")
    entries = {key: value for key, value in header.items() if key != "__metadata__"}
    end_of_data = 0
    for name, entry in entries.items():
        end_of_data = max(end_of_data, _check_entry(name, entry))
    if end_of_data > data_bytes:
        raise ValueError(
            f"truncated: its tensors need {end_of_data:,} bytes of data, the file holds "
            f"{data_bytes:,} ({end_of_data - data_bytes:,} missing)"
        )
    return entries


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(name: str, entry: Any) -> int:
    """Check one tensor's entry; return where its bytes end in the data section."""
    if not isinstance(entry, dict):
        raise ValueError(f"tensor {name!r}: its entry is {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise ValueError(f"tensor {name!r}: dtype must be a string, got {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise ValueError(f"tensor {name!r}: shape must be a list of sizes, got {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(n) for n in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise ValueError(f"tensor {name!r}: data_offsets must be [begin, end], got {offsets!r}")
    itemsize = SAFETENSORS_DTYPE_BYTES.get(dtype)
    if itemsize is not None and math.prod(shape) * itemsize != offsets[1] - offsets[0]:
        raise ValueError(
            f"tensor {name!r}: a {dtype} tensor of shape {shape} takes "
            f"{math.prod(shape) * itemsize:,} bytes, its offsets span {offsets[1] - offsets[0]:,}"
        )
    return offsets[1]


def safetensors_data_bytes(entries: dict[str, dict]) -> int:
    """Bytes of tensor data the (checked) entries cover."""
    return sum(entry["data_offsets"][1] - entry["data_offsets"][0] for entry in entries.values())


def check_safetensors_shapes(path: Path, config: ModelConfig) -> None:
    """Compare the file's tensor names and shapes with what the config implies (after checking
    that the file can hold that many parameters at all)."""
    entries = read_safetensors_header(path)
    config.check_weights_hold(safetensors_data_bytes(entries), str(path))
    expected = config.state_dict_shapes()
    found = {
        key.removeprefix(COMPILE_PREFIX): tuple(entry["shape"]) for key, entry in entries.items()
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
    skipped: tuple[str, ...] = ()
    if not is_checkpoint_dir(path):
        checkpoint, step, selected_because, skipped = select_checkpoint_warning(path)
        if not is_checkpoint_dir(checkpoint):
            raise CheckpointError(
                f"{checkpoint} was selected ({selected_because}) but has no model/config.json"
            )
    config = ModelConfig.from_file(checkpoint / "model" / "config.json")
    weights = find_weights(checkpoint)
    if weights.name == SAFETENSORS:
        check_safetensors_shapes(weights, config)
    else:
        config.check_weights_hold(_file_size(weights), str(weights))
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
        kv_values_per_token=config.kv_bytes_per_token(1),
        eos_id=eos_id,
        config=config.to_dict(),
        warnings=skipped + tuple(warnings),
        details=details,
    )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
