"""Our default architecture is Llama: the mapping of a gpt-simple config and state dict onto
``transformers.LlamaForCausalLM`` (used by the torch tests as an independent reference and by
the benchmark as the competitor on the same weights). numpy in, no torch or transformers here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gpt_simple_lm_format.config import ModelConfig

LLAMA_NAMES = {
    "ln_1": "input_layernorm",
    "ln_2": "post_attention_layernorm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.c_gate": "mlp.gate_proj",
    "mlp.c_up": "mlp.up_proj",
    "mlp.c_down": "mlp.down_proj",
}


def llama_config_kwargs(config: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of ``LlamaConfig`` for ``config``.

    Only for the Llama-equivalent settings: swish, gated MLP, RMSNorm, biases all on or all
    off. Linear RoPE scaling is transformers' ``linear`` rope type with the same factor; NTK is
    plain RoPE with theta = base x factor.
    """
    assert (config.activation, config.mlp_type, config.norm) == ("swish", "gated", "rmsnorm")
    assert len({config.has_qkv_bias, config.has_attn_out_bias, config.has_mlp_bias}) == 1
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_base}
    if config.rope_scaling_type == "linear":
        rope = {"rope_type": "linear", "rope_theta": config.rope_base}
        rope["factor"] = config.rope_scaling_factor
    elif config.rope_scaling_type == "ntk":
        rope["rope_theta"] = config.rope_base * config.rope_scaling_factor
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.ffn_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head or config.n_head,
        "max_position_embeddings": config.n_positions,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.has_qkv_bias,
        "mlp_bias": config.has_mlp_bias,
        "hidden_act": "silu",
    }


def llama_state_dict(
    config: ModelConfig, weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``weights`` under ``LlamaForCausalLM``'s names (a tied head shares the embedding)."""
    mapped = {}
    for key, value in weights.items():
        if key == "wte.weight":
            name = "model.embed_tokens.weight"
        elif key.startswith("ln_f."):
            name = "model.norm." + key.removeprefix("ln_f.")
        elif key == "lm_head.weight":
            name = key
        else:  # h.{i}.{module}.{param}
            _, layer, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            name = f"model.layers.{layer}.{LLAMA_NAMES[module]}.{param}"
        mapped[name] = value
    if config.tie_word_embeddings:
        mapped["lm_head.weight"] = mapped["model.embed_tokens.weight"]
    return mapped
