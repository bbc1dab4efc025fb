"""The gpt-simple trainer's model configuration (``model/config.json``).

One definition of the keys, their defaults and what they imply (head size, FFN width, biases,
the state-dict layout), shared by this format's checkpoint inspection, the PyTorch backend and
the ONNX exporter. See ``docs/checkpoints.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from gpt_simple.plugins import CheckpointError, read_json

ACTIVATIONS = ("swish", "gelu", "relu")
MLP_TYPES = ("gated", "mlp")
NORMS = ("rmsnorm", "layernorm")
ROPE_SCALING_TYPES = (None, "linear", "ntk")


#: The longest context a config may claim: positions are fp32 in RoPE, which stops telling
#: neighbouring positions apart past 2**24 (and nothing trained is near it).
MAX_POSITIONS = 1 << 24


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Positive and finite (``NaN`` compares false with everything, so ``<= 0`` lets it by)."""
    if value is None:
        return
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be positive and finite, got {value}")


def _positions(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _positive(instance, attribute, value)
    if value > MAX_POSITIONS:
        raise ValueError(
            f"{attribute.name} {value} is above the largest supported ({MAX_POSITIONS})"
        )


def _one_of(choices: tuple) -> Any:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{attribute.name} must be one of {allowed}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class ModelConfig:
    """A validated model config with the trainer's defaults filled in."""

    vocab_size: int = attrs.field(validator=_positive)
    n_embd: int = attrs.field(default=768, validator=_positive)
    n_layer: int = attrs.field(default=12, validator=_positive)
    n_head: int = attrs.field(default=12, validator=_positive)
    n_kv_head: int | None = attrs.field(default=None, validator=_positive)
    n_positions: int = attrs.field(default=2048, validator=_positions)
    dropout: float = 0.0
    use_bias: bool = False
    qkv_bias: bool | None = None
    attn_out_bias: bool | None = None
    mlp_bias: bool | None = None
    activation: str = attrs.field(default="swish", validator=_one_of(ACTIVATIONS))
    mlp_type: str = attrs.field(default="gated", validator=_one_of(MLP_TYPES))
    intermediate_size: int | None = attrs.field(default=None, validator=_positive)
    norm: str = attrs.field(default="rmsnorm", validator=_one_of(NORMS))
    norm_eps: float = attrs.field(default=1e-5, validator=_positive)
    tie_word_embeddings: bool = True
    rope_base: float = attrs.field(default=10000.0, validator=_positive)
    rope_scaling_type: str | None = attrs.field(default=None, validator=_one_of(ROPE_SCALING_TYPES))
    rope_scaling_factor: float = attrs.field(default=1.0, validator=_positive)
    attention_mode: str = "causal"

    def __attrs_post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head {self.kv_heads} does not divide n_head {self.n_head}")
        if self.head_dim % 2:
            raise ValueError(f"head size {self.head_dim} must be even for RoPE")

    # Derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def ffn_size(self) -> int:
        """FFN width: explicit, else the trainer's default for the MLP type."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.mlp_type == "gated":
            return 256 * math.ceil((8 * self.n_embd // 3) / 256)
        return 4 * self.n_embd

    @property
    def has_qkv_bias(self) -> bool:
        return self.use_bias if self.qkv_bias is None else self.qkv_bias

    @property
    def has_attn_out_bias(self) -> bool:
        return self.use_bias if self.attn_out_bias is None else self.attn_out_bias

    @property
    def has_mlp_bias(self) -> bool:
        return self.use_bias if self.mlp_bias is None else self.mlp_bias

    @property
    def rope_theta(self) -> float:
        """RoPE base after NTK scaling (the trainer multiplies the base by the factor)."""
        if self.rope_scaling_type == "ntk":
            return self.rope_base * self.rope_scaling_factor
        return self.rope_base

    @property
    def rope_position_scale(self) -> float:
        """Linear scaling divides the inverse frequencies (equivalently, the positions)."""
        return self.rope_scaling_factor if self.rope_scaling_type == "linear" else 1.0

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of KV cache one token occupies across all layers."""
        return 2 * self.n_layer * self.kv_heads * self.head_dim * dtype_bytes

    # The state dict ------------------------------------------------------------------------
    def state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of the trainer's state dict (no ``_orig_mod.`` prefix) and its shape."""
        e, kv = self.n_embd, self.kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"wte.weight": (self.vocab_size, e)}
        norm_keys = ("weight", "bias") if self.norm == "layernorm" else ("weight",)
        linears: list[tuple[str, int, int, bool]] = [
            ("attn.q_proj", e, e, self.has_qkv_bias),
            ("attn.k_proj", e, kv, self.has_qkv_bias),
            ("attn.v_proj", e, kv, self.has_qkv_bias),
            ("attn.c_proj", e, e, self.has_attn_out_bias),
        ]
        f = self.ffn_size
        if self.mlp_type == "gated":
            linears += [
                ("mlp.c_gate", e, f, self.has_mlp_bias),
                ("mlp.c_up", e, f, self.has_mlp_bias),
                ("mlp.c_down", f, e, self.has_mlp_bias),
            ]
        else:
            linears += [
                ("mlp.c_fc", e, f, self.has_mlp_bias),
                ("mlp.c_proj", f, e, self.has_mlp_bias),
            ]
        for i in range(self.n_layer):
            for norm in ("ln_1", "ln_2"):
                for key in norm_keys:
                    shapes[f"h.{i}.{norm}.{key}"] = (e,)
            for name, fan_in, fan_out, bias in linears:
                shapes[f"h.{i}.{name}.weight"] = (fan_out, fan_in)
                if bias:
                    shapes[f"h.{i}.{name}.bias"] = (fan_out,)
        for key in norm_keys:
            shapes[f"ln_f.{key}"] = (e,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, e)
        return shapes

    def param_count(self) -> int:
        """Parameters of the state dict, computed from the sizes (equal to summing
        :meth:`state_dict_shapes`, without building a key per tensor: a hostile ``n_layer``
        of 10**9 must be refused in microseconds, not after minutes of building keys)."""
        e, kv, f = self.n_embd, self.kv_heads * self.head_dim, self.ffn_size
        norm = 2 * e if self.norm == "layernorm" else e
        attention = 2 * e * e + 2 * e * kv
        attention += (e + 2 * kv) * self.has_qkv_bias + e * self.has_attn_out_bias
        if self.mlp_type == "gated":
            mlp = 3 * e * f + (2 * f + e) * self.has_mlp_bias
        else:
            mlp = 2 * e * f + (f + e) * self.has_mlp_bias
        head = 0 if self.tie_word_embeddings else self.vocab_size * e
        return self.vocab_size * e + self.n_layer * (2 * norm + attention + mlp) + norm + head

    def check_weights_hold(self, weight_bytes: int, source: str) -> None:
        """Refuse a config whose sizes the weights on disk cannot hold (at least one byte a
        parameter): every dimension is then bounded by the file, and nothing is built from a
        hostile one (``n_layer: 1000000000`` would otherwise take minutes and gigabytes just
        to list the tensors it expects)."""
        count = self.param_count()
        if count > weight_bytes:
            raise CheckpointError(
                f"{source}: the model config implies {count:,} parameters, more than the "
                f"{weight_bytes:,} bytes of weights can hold: the config does not belong to "
                f"these weights (or is damaged)"
            )

    # Reading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "model config") -> ModelConfig:
        """Validate ``raw``; unknown keys and bad values raise :class:`CheckpointError`."""
        known = {field.name for field in attrs.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(
                f"{source}: unknown key(s) {', '.join(unknown)} (this version understands "
                f"{', '.join(sorted(known))}); a newer trainer may have written them"
            )
        if "vocab_size" not in raw:
            raise CheckpointError(f"{source}: vocab_size is missing")
        _check_types(raw, source)
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        """Read and validate ``model/config.json``."""
        try:
            raw = read_json(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read model config: {exc}") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: model config must be a JSON object")
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config as the trainer writes it (every key, defaults included)."""
        return attrs.asdict(self)


_INT_KEYS = {
    "vocab_size",
    "n_embd",
    "n_layer",
    "n_head",
    "n_kv_head",
    "n_positions",
    "intermediate_size",
}
_FLOAT_KEYS = {"dropout", "norm_eps", "rope_base", "rope_scaling_factor"}
_BOOL_KEYS = {"use_bias", "qkv_bias", "attn_out_bias", "mlp_bias", "tie_word_embeddings"}


def _check_types(raw: Mapping[str, Any], source: str) -> None:
    nullable = {f.name for f in attrs.fields(ModelConfig) if f.default is None}
    for key, value in raw.items():
        if value is None:
            if key in _INT_KEYS | _FLOAT_KEYS | _BOOL_KEYS and key not in nullable:
                raise CheckpointError(f"{source}: {key} cannot be null (leave it out instead)")
            continue
        ok = True
        if key in _INT_KEYS:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif key in _FLOAT_KEYS:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and not (isinstance(value, float) and not math.isfinite(value))
        elif key in _BOOL_KEYS:
            ok = isinstance(value, bool)
        if not ok:
            raise CheckpointError(f"{source}: {key} has the wrong type ({value!r})")
