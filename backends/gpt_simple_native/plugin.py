"""The native backend's plugin: it claims HipGPT checkpoints and runs them with numpy.

Importing this module is cheap (no numpy, never torch): inspection reads headers only, and the
model math (:mod:`gpt_simple_native.model`) is imported by :meth:`NativeBackend.load`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gpt_simple.plugins import (
    AUTO,
    OVERFLOW_WINDOW,
    Backend,
    CheckpointError,
    CheckpointInfo,
    Format,
    LoadedModel,
    LoadRequest,
    Preflight,
    hookimpl,
)
from gpt_simple_native.format import HipGPTDims, read_header, read_weights
from gpt_simple_native.layout import find_tokenizer, locate
from gpt_simple_native.tokenizer import HipGPTTokenizer, read_tokenizer

if TYPE_CHECKING:
    import numpy as np

    from gpt_simple_native.model import HipGPTModel

GPT_SIMPLE_PLUGIN_API = 1

FORMAT = "hipgpt"


def check_tokenizer_fits(tokenizer: HipGPTTokenizer, dims: HipGPTDims, checkpoint: Path) -> None:
    """A HipGPT tokenizer has exactly V tokens; any other size belongs to another model."""
    if len(tokenizer) != dims.V:
        raise CheckpointError(
            f"tokenizer {tokenizer.path} has {len(tokenizer)} tokens but checkpoint {checkpoint} "
            f"has a vocabulary of V={dims.V}: this tokenizer does not belong to it"
        )


def inspect(path: Path, tokenizer: Path | None, load_tokenizer: bool) -> CheckpointInfo | None:
    """Claim and check a HipGPT checkpoint from its headers (no weights read), else None."""
    located = locate(path)
    if located is None:
        return None
    dims = read_header(located.file)
    tokenizer_file = find_tokenizer(located, tokenizer)
    details = {}
    if load_tokenizer:
        loaded = read_tokenizer(tokenizer_file)
        check_tokenizer_fits(loaded, dims, located.file)
        details["tokenizer_format"] = loaded.format_version
    return CheckpointInfo(
        format=FORMAT,
        path=located.file,
        tokenizer=tokenizer_file,
        step=located.step,
        selected_because=located.selected_because,
        weights=located.file,
        param_count=dims.param_count,
        context_length=dims.S,
        eos_id=None,  # HipGPT has no special tokens; --eos_id maps to a record's stop_token_ids
        config=dims.as_config(),
        warnings=located.warnings,
        details=details,
    )


class NativeModel(LoadedModel):
    """A HipGPT model driven by the core: a sliding window of S ids per row, no cache.

    Nothing can be cached between steps (no causal mask, and every position shifts each step),
    so a row is just its last S ids and each call recomputes the windows of its rows in one
    batched forward pass.
    """

    def __init__(self, model: HipGPTModel, tokenizer: HipGPTTokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = "fp32"
        self.device = "cpu"
        self.context_length = model.dims.S
        self.context_overflow = OVERFLOW_WINDOW
        self.notes = {"window": model.dims.S, "tokenizer_format": tokenizer.format_version}
        self.prefill_in_chunks = False  # the first call must see the whole prompt to trim it
        self._rows: dict[int, list[int]] = {}

    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        """Append ``tokens[i]`` to row ``rows[i]``; return float32 logits [len(rows), V] at S-1."""
        import numpy as np

        self.check_forward_arguments(rows, tokens)
        S = self.context_length
        windows = np.zeros((len(rows), S), dtype=np.int64)  # left padding is id 0, as in HipGPT
        for i, (row, new) in enumerate(zip(rows, tokens, strict=True)):
            ids = self._rows.get(row)
            if ids is None:
                # A row's first call carries its prompt; HipGPT keeps the last S-1 ids of a
                # prompt of S ids or more, so its first window starts with one pad.
                ids = list(new[-(S - 1) :]) if len(new) >= S else list(new)
            else:
                ids.extend(new)
                del ids[:-S]  # the window never looks further back
            self._rows[row] = ids
            if ids:
                windows[i, S - len(ids) :] = ids
        return self.model.last_logits(windows)

    def release(self, rows: Sequence[int]) -> None:
        for row in rows:
            self._rows.pop(row, None)

    def close(self) -> None:
        self._rows.clear()


class NativeBackend(Backend):
    """Runs HipGPT ``gpt_checkpoint.bin`` files on the CPU with numpy, in float32."""

    name = "native"
    formats = {FORMAT: AUTO}
    dtypes = ("fp32",)
    devices = ("cpu",)
    context_overflow = (OVERFLOW_WINDOW,)
    requires = ("numpy",)
    refusals = {
        "dtype": "HipGPT checkpoints are float32, and reproducing HipGPT's outputs exactly "
        "needs float32 math (use dtype fp32 or auto)",
        "device": "it is a numpy implementation for the CPU (use device cpu or auto)",
    }

    def preflight(self, checkpoint: CheckpointInfo, request: LoadRequest) -> Preflight:
        if checkpoint.format != FORMAT:
            return Preflight([f"backend 'native' runs HipGPT checkpoints, not {checkpoint.format}"])
        return Preflight()

    def load(self, checkpoint: CheckpointInfo, request: LoadRequest) -> NativeModel:
        from gpt_simple_native.model import HipGPTModel

        if checkpoint.weights is None or checkpoint.tokenizer is None:
            raise CheckpointError(f"{checkpoint.path}: checkpoint has no weights or tokenizer")
        tokenizer = read_tokenizer(checkpoint.tokenizer)
        weights = read_weights(checkpoint.weights)
        check_tokenizer_fits(tokenizer, weights.dims, checkpoint.weights)
        return NativeModel(HipGPTModel(weights), tokenizer)


@hookimpl
def gpt_simple_register_formats(register: Callable[[Format], None]) -> None:
    register(
        Format(FORMAT, "HipGPT gpt_checkpoint.bin files (with tokenizer.json), and run folders")
    )


@hookimpl
def gpt_simple_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the ``native`` backend."""
    register(NativeBackend())


@hookimpl
def gpt_simple_inspect_checkpoint(
    path: Path, tokenizer: Path | None, load_tokenizer: bool
) -> CheckpointInfo | None:
    """Claim HipGPT checkpoints (see :mod:`gpt_simple_native.layout`)."""
    return inspect(path, tokenizer, load_tokenizer)
