"""An independent reference for the torch backend's model math.

:func:`reference_logits` is the architecture written straight from
``shared/specs/gpt-simple-checkpoints.md`` in float64 numpy: no torch and nothing shared with
``gpt_simple_torch.model``, covering every variant the config allows (the Llama-equivalent
settings are also checked against ``transformers`` in ``test_model.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gpt_simple_lm_format.config import ModelConfig


def _silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def _gelu_tanh(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3)))


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


_ACT = {"swish": _silu, "gelu": _gelu_tanh, "relu": _relu}


def reference_logits(
    config: ModelConfig, weights: Mapping[str, np.ndarray], ids: Sequence[int]
) -> np.ndarray:
    """Logits [T, vocab] of one sequence at positions 0..T-1, in float64."""
    w = {key: np.asarray(value, dtype=np.float64) for key, value in weights.items()}
    T, E, H = len(ids), config.n_embd, config.n_head
    KV = config.n_kv_head or config.n_head
    D = E // H
    act = _ACT[config.activation]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        if config.norm == "layernorm":
            mean = x.mean(-1, keepdims=True)
            var = ((x - mean) ** 2).mean(-1, keepdims=True)
            x_hat = (x - mean) / np.sqrt(var + config.norm_eps)
            return x_hat * w[f"{name}.weight"] + w[f"{name}.bias"]
        rms = np.sqrt((x**2).mean(-1, keepdims=True) + config.norm_eps)
        return x / rms * w[f"{name}.weight"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        y = x @ w[f"{name}.weight"].T
        return y + w[f"{name}.bias"] if f"{name}.bias" in w else y

    base, factor = config.rope_base, config.rope_scaling_factor
    theta = base * factor if config.rope_scaling_type == "ntk" else base
    inv_freq = 1.0 / theta ** (np.arange(0, D, 2) / D)
    if config.rope_scaling_type == "linear":
        inv_freq = inv_freq / factor
    angles = np.arange(T)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = np.cos(np.concatenate([angles, angles], axis=-1))  # [T, D]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))

    def rope(z: np.ndarray) -> np.ndarray:  # [heads, T, D]
        first, second = z[..., : D // 2], z[..., D // 2 :]
        return z * cos + np.concatenate([-second, first], axis=-1) * sin

    causal = np.tril(np.ones((T, T), dtype=bool))
    x = w["wte.weight"][list(ids)]
    for i in range(config.n_layer):
        p = f"h.{i}."
        a = norm(x, p + "ln_1")
        q = rope(linear(a, p + "attn.q_proj").reshape(T, H, D).transpose(1, 0, 2))
        k = rope(linear(a, p + "attn.k_proj").reshape(T, KV, D).transpose(1, 0, 2))
        v = linear(a, p + "attn.v_proj").reshape(T, KV, D).transpose(1, 0, 2)
        k, v = np.repeat(k, H // KV, axis=0), np.repeat(v, H // KV, axis=0)  # head h -> h // g
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(D), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        y = (probs @ v).transpose(1, 0, 2).reshape(T, E)
        x = x + linear(y, p + "attn.c_proj")
        m = norm(x, p + "ln_2")
        if config.mlp_type == "gated":
            hidden = act(linear(m, p + "mlp.c_gate")) * linear(m, p + "mlp.c_up")
            x = x + linear(hidden, p + "mlp.c_down")
        else:
            x = x + linear(act(linear(m, p + "mlp.c_fc")), p + "mlp.c_proj")
    x = norm(x, "ln_f")
    head = w["wte.weight"] if config.tie_word_embeddings else w["lm_head.weight"]
    return x @ head.T
