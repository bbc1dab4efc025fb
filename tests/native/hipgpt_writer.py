"""An independent writer of HipGPT checkpoints and tokenizers, for tests.

It follows the spec (``shared/specs/native-format.md`` section 1) with ``struct`` and
``ndarray.tobytes`` and shares no code with the backend's reader, so a round trip checks the
reader against the format rather than against itself.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The order of one layer's tensors in the file, after its three int32 dimensions.
LAYER_ORDER = (
    "w_qkv",
    "w_o",
    "w_1",
    "w_2",
    "b_qkv",
    "b_o",
    "b_1",
    "b_2",
    "ln1_gamma",
    "ln1_beta",
    "ln2_gamma",
    "ln2_beta",
)


def layer_shapes(E: int, F: int) -> dict[str, tuple[int, ...]]:
    return {
        "w_qkv": (E, 3 * E),
        "w_o": (E, E),
        "w_1": (E, F),
        "w_2": (F, E),
        "b_qkv": (3 * E,),
        "b_o": (E,),
        "b_1": (F,),
        "b_2": (E,),
        "ln1_gamma": (E,),
        "ln1_beta": (E,),
        "ln2_gamma": (E,),
        "ln2_beta": (E,),
    }


@dataclass
class TinyHipGPT:
    """All tensors of a HipGPT model, as float32 arrays."""

    V: int
    S: int
    E: int
    H: int
    F: int
    token_embedding: np.ndarray
    position_embedding: np.ndarray
    layers: list[dict[str, np.ndarray]]
    w_out: np.ndarray
    # Per-layer (E, H, F) as written; None writes the true dimensions.
    layer_headers: list[tuple[int, int, int]] | None = field(default=None)

    @property
    def L(self) -> int:
        return len(self.layers)

    def to_bytes(self) -> bytes:
        parts = [struct.pack("<4i", self.V, self.S, self.E, self.L)]
        parts += [self.token_embedding.astype("<f4").tobytes()]
        parts += [self.position_embedding.astype("<f4").tobytes()]
        for i, layer in enumerate(self.layers):
            dims = self.layer_headers[i] if self.layer_headers else (self.E, self.H, self.F)
            parts.append(struct.pack("<3i", *dims))
            parts += [layer[name].astype("<f4").tobytes() for name in LAYER_ORDER]
        parts.append(self.w_out.astype("<f4").tobytes())
        return b"".join(parts)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path

    def layer_header_offset(self, layer: int) -> int:
        """Byte offset of ``layer``'s (E, H, F), computed from the spec's layout."""
        E, F = self.E, self.F
        block = 12 + 4 * (4 * E * E + 2 * E * F + 9 * E + F)
        return 16 + 4 * (self.V * self.E + self.S * self.E) + layer * block


def random_model(
    V: int, S: int, E: int, L: int, H: int, F: int, *, seed: int = 0, scale: float = 0.1
) -> TinyHipGPT:
    """Seeded random weights (norm gains near 1) for the given dimensions."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, base: float = 0.0, std: float = scale) -> np.ndarray:
        return (base + std * rng.standard_normal(shape)).astype(np.float32)

    layers = []
    for _ in range(L):
        layer = {name: normal(*shape) for name, shape in layer_shapes(E, F).items()}
        layer["ln1_gamma"] = normal(E, base=1.0)
        layer["ln2_gamma"] = normal(E, base=1.0)
        layers.append(layer)
    return TinyHipGPT(
        V=V,
        S=S,
        E=E,
        H=H,
        F=F,
        token_embedding=normal(V, E, std=1.0),
        position_embedding=normal(S, E, std=1.0),
        layers=layers,
        w_out=normal(E, V),
    )


def write_tokenizer(
    path: Path, tokens: Sequence[str], merges: Sequence[tuple[str, str, int]] | None = None
) -> Path:
    """A HipGPT tokenizer.json: v2 when ``merges`` is given, else v1."""
    data: dict = {"stoi_to_token": list(tokens)}
    if merges is not None:
        data["merge_rank"] = [list(m) for m in merges]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def character_tokens(count: int) -> list[str]:
    """``count`` distinct single-character tokens (a v1 vocabulary of a given size)."""
    return [chr(ord("a") + i) if i < 26 else chr(0x100 + i) for i in range(count)]
