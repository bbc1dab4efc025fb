"""HipGPT ``gpt_checkpoint.bin``: the header, its validation, and reading the weights.

The file is a raw little-endian dump with no magic and no version (spec section 1)::

    int32 V, S, E, L
    f32 token embedding [V, E], position embedding [S, E]
    L times: int32 E, H, F; W_qkv [E, 3E], W_o [E, E], W_1 [E, F], W_2 [F, E];
             b_qkv [3E], b_o [E], b_1 [F], b_2 [E]; ln1 gamma, beta, ln2 gamma, beta [E] each
    f32 W_out [E, V]

Every dimension comes from the file. :func:`read_header` checks a file from a few header bytes
(no weights read, nothing allocated from the dimensions), so inspection and dry runs can call it;
:func:`read_weights` runs the same checks and then maps the floats into numpy arrays.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import attrs

from gpt_simple.plugins import CheckpointError

if TYPE_CHECKING:
    import numpy as np

HEADER = struct.Struct("<4i")  # V, S, E, L
LAYER_HEADER = struct.Struct("<3i")  # E (repeated), H, F
FLOAT_BYTES = 4

# Bounds on what a HipGPT model can plausibly be. They turn garbage headers into a clear error
# before anything is allocated from them (the file size check alone would accept, say, S = 10^6
# with E = 1, whose attention needs S x S floats per head).
MAX_VOCAB = 1 << 24
MAX_DIM = 1 << 16  # S, E, L, H and F
MAX_FILE_BYTES = 256 << 30


@attrs.frozen
class HipGPTDims:
    """The dimensions of a HipGPT model, named as in the spec. H and F are the same in every
    layer (HipGPT builds all layers from one set of flags)."""

    V: int  # vocabulary size
    S: int  # context length (max_seq_len at training)
    E: int  # embedding width
    L: int  # layers
    H: int  # attention heads
    F: int  # feed-forward width

    @property
    def layer_floats(self) -> int:
        """Floats in one layer block: four E x E-ish matrices, two FFN matrices, biases, norms."""
        E, F = self.E, self.F
        return 4 * E * E + 2 * E * F + 9 * E + F

    @property
    def layer_bytes(self) -> int:
        """Bytes of one layer block, its three int32 dimensions included."""
        return LAYER_HEADER.size + FLOAT_BYTES * self.layer_floats

    @property
    def first_layer_offset(self) -> int:
        """Byte offset of layer 0's header (after the two embedding tables)."""
        return HEADER.size + FLOAT_BYTES * (self.V * self.E + self.S * self.E)

    @property
    def file_size(self) -> int:
        """The exact size of a file with these dimensions."""
        return self.first_layer_offset + self.L * self.layer_bytes + FLOAT_BYTES * self.E * self.V

    @property
    def param_count(self) -> int:
        return self.V * self.E + self.S * self.E + self.L * self.layer_floats + self.E * self.V

    def as_config(self) -> dict[str, int]:
        return {"V": self.V, "S": self.S, "E": self.E, "L": self.L, "H": self.H, "F": self.F}

    def describe(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.as_config().items())


@attrs.frozen
class LayerWeights:
    """One transformer block, matrices stored [in, out] as in the file."""

    w_qkv: np.ndarray  # [E, 3E]
    w_o: np.ndarray  # [E, E]
    w_1: np.ndarray  # [E, F]
    w_2: np.ndarray  # [F, E]
    b_qkv: np.ndarray  # [3E]
    b_o: np.ndarray  # [E]
    b_1: np.ndarray  # [F]
    b_2: np.ndarray  # [E]
    ln1_gamma: np.ndarray  # [E]
    ln1_beta: np.ndarray  # [E]
    ln2_gamma: np.ndarray  # [E]
    ln2_beta: np.ndarray  # [E]


@attrs.frozen
class HipGPTWeights:
    """Every tensor of a checkpoint as read-only float32 views of one buffer."""

    dims: HipGPTDims
    token_embedding: np.ndarray  # [V, E]
    position_embedding: np.ndarray  # [S, E]
    layers: tuple[LayerWeights, ...]
    w_out: np.ndarray  # [E, V]


def _error(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid HipGPT checkpoint: {problem}")


def _check_dim(path: Path, name: str, meaning: str, value: int, limit: int) -> None:
    if not 1 <= value <= limit:
        problem = f"{name} ({meaning}) = {value} is not a plausible dimension (must be 1..{limit})"
        raise _error(path, problem)


def read_header(path: Path) -> HipGPTDims:
    """Validate ``path`` from its headers and size alone and return its dimensions.

    Reads 16 bytes plus 12 per layer. Raises :class:`CheckpointError` naming the file for a file
    that is too short, truncated, has trailing bytes, has implausible dimensions, a layer whose E
    differs from the header (or whose H or F differs from layer 0), or E not divisible by H.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            return _walk_headers(f, size, path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None


def _read_at(f: BinaryIO, offset: int, layout: struct.Struct) -> tuple[int, ...]:
    f.seek(offset)
    return layout.unpack(f.read(layout.size))


def _walk_headers(f: BinaryIO, size: int, path: Path) -> HipGPTDims:
    if size < HEADER.size:
        raise _error(path, f"the file has {size} bytes, too few for the 16-byte header")
    V, S, E, L = _read_at(f, 0, HEADER)
    _check_dim(path, "V", "vocab size", V, MAX_VOCAB)
    _check_dim(path, "S", "context length", S, MAX_DIM)
    _check_dim(path, "E", "embedding width", E, MAX_DIM)
    _check_dim(path, "L", "layer count", L, MAX_DIM)
    header = f"V={V}, S={S}, E={E}, L={L}"
    # H and F are not known yet; with H = F = 1 the size is a lower bound, and the offset of
    # layer 0 does not depend on them.
    partial = HipGPTDims(V, S, E, L, H=1, F=1)
    if partial.file_size > MAX_FILE_BYTES:
        smallest = partial.file_size
        raise _error(path, f"the header ({header}) implies a file of at least {smallest:,} bytes")
    first = partial.first_layer_offset
    if first + LAYER_HEADER.size > size:
        problem = f"the header ({header}) puts layer 0 at byte {first:,} but the file has {size:,}"
        raise _error(path, f"truncated: {problem} bytes")

    layer_e, H, F = _read_at(f, first, LAYER_HEADER)
    if layer_e != E:
        raise _error(path, f"layer 0 stores E={layer_e} but the file header says E={E}")
    _check_dim(path, "H", "heads in layer 0", H, MAX_DIM)
    _check_dim(path, "F", "feed-forward width in layer 0", F, MAX_DIM)
    if E % H:
        raise _error(path, f"E={E} is not divisible by H={H} heads")
    dims = HipGPTDims(V, S, E, L, H, F)
    if dims.file_size > MAX_FILE_BYTES:
        raise _error(path, f"its dimensions ({dims.describe()}) imply {dims.file_size:,} bytes")

    for layer in range(1, L):
        offset = first + layer * dims.layer_bytes
        if offset + LAYER_HEADER.size > size:
            break  # truncated: reported with the exact sizes below
        found = _read_at(f, offset, LAYER_HEADER)
        if found[0] != E:
            raise _error(path, f"layer {layer} stores E={found[0]} but the file header says E={E}")
        if found[1:] != (H, F):
            stored = f"H={found[1]}, F={found[2]}"
            problem = f"layer {layer} stores {stored} but layer 0 has H={H}, F={F}"
            raise _error(path, f"{problem} (HipGPT gives every layer the same H and F)")

    expected = dims.file_size
    if size != expected:
        sizes = f"{dims.describe()} needs {expected:,} bytes, the file has {size:,}"
        if size < expected:
            raise _error(path, f"truncated: {sizes} ({expected - size:,} missing)")
        raise _error(path, f"{size - expected:,} trailing bytes: {sizes}")
    return dims


class _Cursor:
    """Hands out consecutive slices of the float buffer, in file order."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer = buffer
        self.position = HEADER.size // FLOAT_BYTES

    def take(self, *shape: int) -> np.ndarray:
        start = self.position
        self.position += math.prod(shape)
        return self.buffer[start : self.position].reshape(shape)

    def skip_ints(self, count: int) -> None:
        self.position += count  # int32 fields are 4 bytes, like the floats around them


def read_weights(path: Path) -> HipGPTWeights:
    """Validate ``path`` (as :func:`read_header`) and read every tensor, float32 row-major."""
    import numpy as np  # imported here so that inspection and dry runs never load numpy

    dims = read_header(path)
    try:
        buffer = np.fromfile(path, dtype="<f4")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from None
    if buffer.size * FLOAT_BYTES != dims.file_size:  # changed since the header was checked
        raise _error(path, f"its size changed while reading ({buffer.size * FLOAT_BYTES:,} bytes)")
    buffer = buffer.astype(np.float32, copy=False)  # native byte order (a copy on big-endian)
    buffer.flags.writeable = False

    V, S, E, F = dims.V, dims.S, dims.E, dims.F
    cursor = _Cursor(buffer)
    token_embedding = cursor.take(V, E)
    position_embedding = cursor.take(S, E)
    layers = []
    for _ in range(dims.L):
        cursor.skip_ints(LAYER_HEADER.size // FLOAT_BYTES)
        matrices = {
            "w_qkv": cursor.take(E, 3 * E),
            "w_o": cursor.take(E, E),
            "w_1": cursor.take(E, F),
            "w_2": cursor.take(F, E),
        }
        biases = {
            "b_qkv": cursor.take(3 * E),
            "b_o": cursor.take(E),
            "b_1": cursor.take(F),
            "b_2": cursor.take(E),
        }
        norms = {
            name: cursor.take(E) for name in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")
        }
        layers.append(LayerWeights(**matrices, **biases, **norms))
    w_out = cursor.take(E, V)
    assert cursor.position == buffer.size, "layout arithmetic disagrees with file_size"
    return HipGPTWeights(dims, token_embedding, position_embedding, tuple(layers), w_out)
