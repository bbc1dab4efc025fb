"""The model math: logits against transformers' Llama and an independent numpy reference."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_torch.model import GPT
from tests.support.checkpoints import small_config
from tests.support.llama import llama_config_kwargs, llama_state_dict
from tests.torch.helpers import build_gpt
from tests.torch.reference import reference_logits

pytestmark = pytest.mark.torch

TOLERANCE = 1e-4
# Two sequences of different content, long enough for RoPE angles of several radians.
SEQ_LEN = 24


def to_llama(config: ModelConfig, weights: Mapping[str, np.ndarray]) -> LlamaForCausalLM:
    """``LlamaForCausalLM`` (eager attention, fp32) holding ``weights``."""
    llama_config = LlamaConfig(**llama_config_kwargs(config))
    llama_config._attn_implementation = "eager"
    mapped = {
        name: torch.from_numpy(np.ascontiguousarray(value))
        for name, value in llama_state_dict(config, weights).items()
    }
    model = LlamaForCausalLM(llama_config).eval()
    model.load_state_dict(mapped, strict=True)
    return model


def sequences(config: ModelConfig, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 300, size=(2, SEQ_LEN)))


LLAMA_CASES = {
    "default": {},
    "gqa": {"n_kv_head": 2},
    "multi-query": {"n_kv_head": 1, "n_head": 8},
    "untied": {"tie_word_embeddings": False},
    "linear-rope": {"rope_scaling_type": "linear", "rope_scaling_factor": 4.0},
    "ntk-rope": {"rope_scaling_type": "ntk", "rope_scaling_factor": 8.0, "rope_base": 500.0},
    "all-biases": {"use_bias": True, "n_kv_head": 2},
}


@pytest.mark.parametrize("overrides", LLAMA_CASES.values(), ids=LLAMA_CASES.keys())
def test_logits_match_transformers_llama(vocab_tokens: int, overrides: dict) -> None:
    config = small_config(vocab_tokens, **overrides)
    model, weights = build_gpt(config)
    ids = sequences(config)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        theirs = to_llama(config, weights)(input_ids=ids).logits
    assert ours.shape == (2, SEQ_LEN, config.vocab_size)
    assert (ours - theirs).abs().max().item() <= TOLERANCE
    assert theirs.std().item() > 0.5  # the comparison is not between near-zero logits


VARIANT_CASES = {
    "default": {},
    "layernorm": {"norm": "layernorm"},
    "plain-mlp-gelu": {"mlp_type": "mlp", "activation": "gelu"},
    "gated-relu": {"activation": "relu"},
    "plain-mlp-relu-gqa": {"mlp_type": "mlp", "activation": "relu", "n_kv_head": 2},
    "qkv-bias-only": {"qkv_bias": True},
    "out-and-mlp-bias": {"attn_out_bias": True, "mlp_bias": True},
    "biases-but-qkv": {"use_bias": True, "qkv_bias": False, "norm": "layernorm"},
    "explicit-ffn-untied": {"intermediate_size": 96, "tie_word_embeddings": False},
    "linear-rope-gelu": {"rope_scaling_type": "linear", "rope_scaling_factor": 2.0},
}


@pytest.mark.parametrize("overrides", VARIANT_CASES.values(), ids=VARIANT_CASES.keys())
def test_logits_match_numpy_reference(vocab_tokens: int, overrides: dict) -> None:
    config = small_config(vocab_tokens, **overrides)
    model, weights = build_gpt(config, seed=3)
    ids = sequences(config, seed=4)[0]
    with torch.no_grad():
        ours = model(input_ids=ids[None]).logits[0].numpy()
    expected = reference_logits(config, weights, ids.tolist())
    assert np.abs(ours - expected).max() <= TOLERANCE
    assert expected.std() > 0.5


def test_numpy_reference_agrees_with_llama(vocab_tokens: int) -> None:
    """The numpy reference is itself checked where transformers can check it."""
    config = small_config(vocab_tokens, n_kv_head=2, rope_scaling_type="ntk")
    _, weights = build_gpt(config, seed=5)
    ids = sequences(config, seed=6)[0]
    with torch.no_grad():
        llama = to_llama(config, weights)(input_ids=ids[None]).logits[0].numpy()
    assert np.abs(reference_logits(config, weights, ids.tolist()) - llama).max() <= TOLERANCE


def test_loss_is_shifted_cross_entropy(config: ModelConfig) -> None:
    model, _ = build_gpt(config)
    ids = sequences(config)
    out = model(input_ids=ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1)
    )
    assert torch.allclose(out.loss, expected)
    out.loss.backward()  # trainable: gradients reach the embedding through the tied head
    assert model.wte.weight.grad is not None


def test_fresh_model_is_initialised_for_training(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = GPT(config)
    assert model.config is config
    assert abs(model.wte.weight.std().item() - 0.02) < 0.002
    # residual projections are scaled down by sqrt(2 * n_layer)
    assert model.h[0].attn.c_proj.weight.std().item() < 0.015
    assert torch.equal(model.h[0].ln_1.weight, torch.ones(config.n_embd))
    assert sorted(model.state_dict()) == sorted(config.state_dict_shapes())


def test_from_state_dict_shares_the_given_tensors(config: ModelConfig) -> None:
    """Loading assigns the caller's tensors (no random init, no copy)."""
    model, _ = build_gpt(config)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = GPT.from_state_dict(config, tensors)
    assert loaded.wte.weight.data_ptr() == tensors["wte.weight"].data_ptr()
    assert loaded.rotary.inv_freq.device.type == "cpu"


@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 2}], ids=["mha", "gqa"])
def test_forward_past_matches_full_forward(vocab_tokens: int, overrides: dict) -> None:
    """The explicit-past path (what the ONNX export traces): a padded past and padded new
    tokens give each row the logits of a full forward over its real tokens."""
    config = small_config(vocab_tokens, **overrides)
    model, _ = build_gpt(config, seed=7)
    ids = sequences(config, seed=8)
    lengths = [9, 5]  # real past tokens per row; row 1's past is padded at the end
    new = [3, 1]  # real new tokens per row; row 1's new tokens are padded
    with torch.no_grad():
        past_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
        first_pos = torch.arange(9)[None].expand(2, 9)
        _, past = model.forward_past(
            ids[:, :9], past_mask, first_pos, [(empty, empty) for empty in empty_past(config)]
        )
        step_ids = torch.stack([ids[0, 9:12], torch.cat([ids[1, 5:6], ids[1, :2]])])
        step_mask = torch.cat([past_mask, torch.tensor([[1, 1, 1], [1, 0, 0]])], dim=1)
        step_pos = torch.tensor(lengths)[:, None] + torch.arange(3)
        logits, presents = model.forward_past(step_ids, step_mask, step_pos, past)
        for row in range(2):
            real = ids[row, : lengths[row] + new[row]]
            expected = model(input_ids=real[None]).logits[0, -1]
            assert (logits[row, new[row] - 1] - expected).abs().max().item() <= 2e-5
    assert presents[0][0].shape == (2, config.kv_heads, 12, config.head_dim)


def empty_past(config: ModelConfig) -> list[torch.Tensor]:
    """One empty key (or value) tensor per layer: a past of length 0."""
    return [torch.zeros(2, config.kv_heads, 0, config.head_dim) for _ in range(config.n_layer)]
