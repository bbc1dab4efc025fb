"""The gpt-simple trainer's model (SimpleLLM) in PyTorch, in one file.

A pre-norm, Llama-style decoder (see ``shared/specs/gpt-simple-checkpoints.md``)::

    x = wte[ids]
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = head(ln_f(x))          # head = wte.weight (tied) or lm_head

Attention applies rotary position embeddings (rotate-half convention, cos/sin laid out as
``[freqs, freqs]``) to queries and keys and supports grouped-query attention (``n_kv_head``
key/value heads shared by ``n_head // n_kv_head`` query heads each). Every size comes from
:class:`~gpt_simple_lm_format.config.ModelConfig`.

Two ways to run it:

* :meth:`GPT.forward` over whole sequences, no cache: what training and scripts written for the
  trainer use (``model(input_ids=ids).logits``);
* :meth:`GPT.step` over a batch of rows that each continue a sequence held in a
  :class:`KVCache`: what the inference runner (``plugin.TorchModel``) uses;
* :meth:`GPT.forward_past` with the past keys and values passed in and returned: the
  decoder-with-past signature that the ONNX export traces (``gpt_simple_onnx.export``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt_simple_lm_format.config import ModelConfig

ACTIVATIONS = {
    "swish": F.silu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# Fused projections ----------------------------------------------------------------------------


class FusedLinears:
    """Several ``nn.Linear`` of one input (q/k/v, gate/up) run as one matrix product.

    The fused matrix is stored ``[in, sum of outs]`` (the transposed layout of
    :func:`~gpt_simple_torch.loading.store_matrices_transposed`), and each linear keeps its
    own ``weight`` and ``bias`` as views into it: ``state_dict``, the trainer's API and
    in-place weight updates see the usual modules. One product reads the input once and
    streams one matrix (q/k/v at batch 1: 0.16 against 0.21 ms on GPT-2-small). Each output
    column is the same dot product in the same order as the linear's own, so results are
    bitwise identical (tested). A module converted or moved afterwards (``.half()``, ``.to``)
    rebinds its parameters: :meth:`__call__` notices and runs the linears one by one.
    """

    def __init__(self, linears: Sequence[nn.Linear], release: Callable[[Tensor], None]) -> None:
        first = linears[0].weight
        self.linears = tuple(linears)
        self.sizes = [linear.out_features for linear in linears]
        fused_t = torch.empty(
            linears[0].in_features, sum(self.sizes), dtype=first.dtype, device=first.device
        )
        biases = [linear.bias for linear in linears]
        if len({b is None for b in biases}) > 1:  # the fused product adds one bias or none
            raise ValueError("fused linears need a bias each, or none at all")
        self.bias = None if biases[0] is None else torch.cat(biases)
        start = 0
        for linear, size in zip(linears, self.sizes, strict=True):
            original = linear.weight
            fused_t[:, start : start + size].copy_(original.detach().t())
            view = fused_t[:, start : start + size].t()
            linear.weight = nn.Parameter(view, requires_grad=False)
            if self.bias is not None:
                linear.bias = nn.Parameter(self.bias[start : start + size], requires_grad=False)
            release(original)
            del original
            start += size
        self.weight = fused_t.t()  # [sum of outs, in], as F.linear takes it
        self._pointers = self._bound()

    def _bound(self) -> tuple[int, ...]:
        return tuple(
            p.data_ptr()
            for linear in self.linears
            for p in (linear.weight, linear.bias)
            if p is not None
        )

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        if self._bound() != self._pointers:
            return tuple(linear(x) for linear in self.linears)
        return F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)


# Norms ----------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back to the input dtype before the gain."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps)
    return RMSNorm(config.n_embd, config.norm_eps)


# Rotary position embeddings -------------------------------------------------------------------
def rope_inv_freq(config: ModelConfig, device: torch.device | str | None = None) -> Tensor:
    """Inverse frequencies ``theta^(-2i/d)``; NTK scaling already raised theta, linear
    scaling divides them by the factor (the same as dividing the positions).

    Computed as the trainer does (``base ** -e``, not ``1 / base ** e``): the two differ in the
    last bit of a few fp32 values, an error that grows with position (~1e-4 in the logits
    past a few hundred tokens)."""
    d = config.head_dim
    exponents = torch.arange(0, d, 2, dtype=torch.float32, device=device) / d
    return config.rope_theta ** (-exponents) / config.rope_position_scale


class RotaryEmbedding(nn.Module):
    """cos and sin of ``position * inv_freq`` for arbitrary (per-row) positions.

    Computed per call instead of read from a table of ``n_positions`` rows: it costs a few
    elementwise ops, and positions past ``n_positions`` (extrapolation, which the trainer
    allows) need no special case.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # Made on the CPU even inside a `torch.device(...)` block: on the meta device (loading)
        # arange would import torch's compiler stack (~70 MB) for a value replaced anyway.
        # .to() moves it with the module; forward follows the positions' device regardless.
        self.register_buffer("inv_freq", rope_inv_freq(config, "cpu"), persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions`` [B, T] (or [1, T]) -> cos, sin [B, 1, T, head_dim] (broadcast over
        heads), computed in fp32 and then cast to ``dtype``, once for all layers."""
        inv_freq = self.inv_freq.to(positions.device)  # no-op unless built on another device
        freqs = positions[:, None, :, None].float() * inv_freq  # [B, 1, T, head_dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, heads, T, head_dim] by the angles of ``cos``/``sin`` [B, 1, T, head_dim]."""
    return x * cos + rotate_half(x) * sin


# The cache ------------------------------------------------------------------------------------
class KVCache:
    """Keys and values of every layer for a set of sequences ("slots"), grown on demand.

    ``k`` and ``v`` are dense tensors of shape ``[n_layer, slots, kv_heads, capacity, head_dim]``
    and ``lengths[s]`` says how many positions of slot ``s`` are valid. A step writes only its
    new tokens, in place, and attention reads ``k[layer, slots, :, :span]``: a view (no copy)
    when the batch's slots are an ascending contiguous run, a gather otherwise. Positions past a
    slot's length may hold stale values of an earlier sequence; the attention mask never lets
    a query see them, so releasing a slot is just setting its length to 0.

    Growth reallocates and copies, so it is amortised: capacity grows by at least half, in
    multiples of ``block`` positions. Every slot has the same capacity, so one long row
    reserves that length for all slots; that is the price of batching without a gather.
    """

    def __init__(
        self, config: ModelConfig, *, dtype: torch.dtype, device: torch.device, block: int = 256
    ) -> None:
        self.block = block
        self._shape = (config.n_layer, 0, config.kv_heads, 0, config.head_dim)
        self.k = torch.zeros(self._shape, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.lengths: list[int] = []

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def reserve(self, slots: int, length: int) -> None:
        """Make room for at least ``slots`` slots of ``length`` positions each."""
        if slots <= self.slots and length <= self.capacity:
            return
        new_slots = max(slots, self.slots)
        new_capacity = self.capacity
        if length > self.capacity:
            wanted = max(length, self.capacity + self.capacity // 2)
            new_capacity = self.block * math.ceil(wanted / self.block)
        layers, _, heads, _, head_dim = self._shape
        shape = (layers, new_slots, heads, new_capacity, head_dim)
        old_slots, old_capacity = self.slots, self.capacity
        for name in ("k", "v"):
            old = getattr(self, name)
            # zeros, not empty: masked positions still enter probs @ v (as 0 * value), and
            # uninitialised memory may hold NaN bit patterns, which would poison real rows
            try:
                new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            except RuntimeError:  # out of memory: the row asking fails, the cache stays usable
                if name == "v":  # k grew already: back to its old shape (a view, no copy)
                    self.k = self.k[:, :old_slots, :, :old_capacity]
                raise
            new[:, :old_slots, :, :old_capacity] = old
            setattr(self, name, new)
            del old  # free each old tensor before allocating the next
        self.lengths += [0] * (new_slots - len(self.lengths))

    def release(self, slot: int) -> None:
        if slot < len(self.lengths):
            self.lengths[slot] = 0

    @torch.inference_mode()  # the cache may have been made in inference mode (by a step)
    def move(self, source: int, target: int) -> None:
        """Copy slot ``source``'s valid positions to slot ``target`` (which takes its length)."""
        n = self.lengths[source]
        self.k[:, target, :, :n] = self.k[:, source, :, :n]
        self.v[:, target, :, :n] = self.v[:, source, :, :n]
        self.lengths[target] = n

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class CachedStep:
    """Where one batched step reads and writes the cache; the same for every layer.

    ``read`` selects the batch's slots (a slice when contiguous, so reading is a view);
    ``write_slot``/``write_pos`` address every real new token (padding is never written);
    ``valid`` [B, T] marks real new tokens; ``mask`` [B, 1, T, span] says which cached
    positions each query may see.
    """

    read: slice | Tensor
    write_slot: Tensor
    write_pos: Tensor
    valid: Tensor
    mask: Tensor
    span: int


def additive_mask(attention_mask: Tensor, new_tokens: int | Tensor, dtype: torch.dtype) -> Tensor:
    """[B, 1, T, P + T] additive mask for :meth:`GPT.forward_past`: 0 where query ``t`` (index
    ``P + t``) may see key ``j`` (``j <= P + t`` and ``attention_mask[b, j]`` is 1), else the
    dtype's most negative finite value. Not -inf: a query that sees nothing (padding) then gets
    a uniform softmax instead of NaN."""
    device = attention_mask.device
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=device)
    queries = torch.arange(new_tokens, device=device) + (total - new_tokens)
    visible = (keys[None, :] <= queries[:, None])[None] & attention_mask[:, None, :].bool()
    zero = torch.zeros((), dtype=dtype, device=device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.where(visible, zero, blocked)[:, None]


# Layers ---------------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, kv = config.n_embd, config.kv_heads * config.head_dim
        self.n_head, self.kv_heads, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(e, e, bias=config.has_qkv_bias)
        self.k_proj = nn.Linear(e, kv, bias=config.has_qkv_bias)
        self.v_proj = nn.Linear(e, kv, bias=config.has_qkv_bias)
        self.c_proj = nn.Linear(e, e, bias=config.has_attn_out_bias)
        self.dropout = config.dropout
        self.fused: FusedLinears | None = None  # q/k/v as one product (set at load on CPUs)

    def fusable(self) -> tuple[nn.Linear, ...]:
        return (self.q_proj, self.k_proj, self.v_proj)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries [B, n_head, T, head_dim] and keys, values [B, kv_heads, T, head_dim] of
        ``x`` [B, T, n_embd], RoPE applied to queries and keys: the part every path shares."""
        B, T, _ = x.shape
        if self.fused is not None:
            q, k, v = self.fused(x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, y: Tensor) -> Tensor:
        """Merge the heads of ``y`` [B, n_head, T, head_dim] and project back to n_embd."""
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return F.dropout(self.c_proj(y), self.dropout, self.training)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        step: CachedStep | None = None,
    ) -> Tensor:
        """``x`` [B, T, n_embd]; with ``cache`` (this layer's k, v) and ``step``, continue the
        cached sequences instead of attending causally within ``x``."""
        q, k, v = self.project(x, cos, sin)
        # enable_gqa lets each group of query heads read its shared k/v head without copying it
        gqa = self.kv_heads != self.n_head
        if cache is None or step is None:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa
            )
        else:
            k_cache, v_cache = cache  # [slots, kv_heads, capacity, head_dim]
            # k[:, :, valid] is [n_new, kv_heads, head_dim], the shape of this indexed write
            k_cache[step.write_slot, :, step.write_pos] = k.transpose(1, 2)[step.valid]
            v_cache[step.write_slot, :, step.write_pos] = v.transpose(1, 2)[step.valid]
            keys = k_cache[step.read, :, : step.span]
            values = v_cache[step.read, :, : step.span]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.mask, enable_gqa=gqa)
        return self.output(y)

    def forward_past(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor], mask: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The explicit-past path (what an exported graph computes): attend from ``x``
        [B, T, n_embd] over ``past`` keys and values [B, kv_heads, P, head_dim] followed by
        the new ones, under the additive ``mask`` [B, 1, T, P + T]. Returns the output and the
        present keys and values [B, kv_heads, P + T, head_dim]."""
        q, k, v = self.project(x, cos, sin)
        keys = torch.cat((past[0], k), dim=2)
        values = torch.cat((past[1], v), dim=2)
        gqa = self.kv_heads != self.n_head
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
        return self.output(y), (keys, values)


class GatedMLP(nn.Module):
    """``c_down(act(c_gate(x)) * c_up(x))`` (SwiGLU with the default swish)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, f, bias = config.n_embd, config.ffn_size, config.has_mlp_bias
        self.c_gate = nn.Linear(e, f, bias=bias)
        self.c_up = nn.Linear(e, f, bias=bias)
        self.c_down = nn.Linear(f, e, bias=bias)
        self.act = ACTIVATIONS[config.activation]
        self.dropout = config.dropout
        self.fused: FusedLinears | None = None  # gate/up as one product (set at load on CPUs)

    def fusable(self) -> tuple[nn.Linear, ...]:
        return (self.c_gate, self.c_up)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            gate, up = self.fused(x)
        else:
            gate, up = self.c_gate(x), self.c_up(x)
        y = self.c_down(self.act(gate) * up)
        return F.dropout(y, self.dropout, self.training)


class MLP(nn.Module):
    """``c_proj(act(c_fc(x)))`` (``mlp_type: mlp``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, f, bias = config.n_embd, config.ffn_size, config.has_mlp_bias
        self.c_fc = nn.Linear(e, f, bias=bias)
        self.c_proj = nn.Linear(f, e, bias=bias)
        self.act = ACTIVATIONS[config.activation]
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.c_proj(self.act(self.c_fc(x))), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = GatedMLP(config) if config.mlp_type == "gated" else MLP(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        step: CachedStep | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin, cache, step)
        return x + self.mlp(self.ln_2(x))

    def forward_past(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor], mask: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """:meth:`forward` with an explicit past (see :meth:`GPT.forward_past`)."""
        y, present = self.attn.forward_past(self.ln_1(x), cos, sin, past, mask)
        x = x + y
        return x + self.mlp(self.ln_2(x)), present


@dataclass
class CausalLMOutput:
    """What :meth:`GPT.forward` returns: ``logits`` [B, T, vocab] and, given labels, ``loss``."""

    logits: Tensor
    loss: Tensor | None = None


class GPT(nn.Module):
    """The decoder. ``GPT(config)`` initialises weights for training; load a checkpoint with
    :meth:`from_state_dict` (no throwaway initialisation)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # _weight skips nn.Embedding's own initialiser: _init_weights initialises it, and on
        # the meta device normal_ would import torch's compiler stack (~70 MB, ~1 s) for nothing
        self.wte = nn.Embedding(
            config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)
        )
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        )
        self.rotary = RotaryEmbedding(config)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 style: N(0, 0.02), zero biases, and the projections that write into the
        residual stream scaled by 1/sqrt(2 n_layer) so its variance does not grow with depth.
        Skipped on the meta device (loading), where the weights arrive by assignment."""
        if self.wte.weight.is_meta:
            return
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() == 2:
                std = 0.02
                if name.endswith(("c_proj.weight", "c_down.weight")):
                    std /= math.sqrt(2 * self.config.n_layer)
                nn.init.normal_(param, mean=0.0, std=std)

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: Mapping[str, Tensor]) -> GPT:
        """Build the module around ``state_dict``'s tensors (keys exactly as
        ``config.state_dict_shapes()``), on their device and dtype, without copying them.

        The module is created on the ``meta`` device (no memory, no random init) and the
        tensors are assigned, so loading peaks at one copy of the weights.
        """
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        # The only tensor not in the state dict: recompute it where the weights live.
        model.rotary.inv_freq = rope_inv_freq(config, model.wte.weight.device)
        return model

    def _head(self, x: Tensor) -> Tensor:
        x = self.ln_f(x)
        return self.lm_head(x) if self.lm_head is not None else F.linear(x, self.wte.weight)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> CausalLMOutput:
        """Logits of every position of ``input_ids`` [B, T] (positions 0..T-1, no cache).

        With ``labels`` (usually ``input_ids``; -100 is ignored) the loss is the mean
        cross-entropy of predicting ``labels[:, 1:]`` from positions ``:-1``.
        """
        T = input_ids.shape[1]
        x = self.wte(input_ids)
        cos, sin = self.rotary(torch.arange(T, device=input_ids.device)[None], x.dtype)
        for block in self.h:
            x = block(x, cos, sin)
        logits = self._head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutput(logits=logits, loss=loss)

    def forward_past(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        past: Sequence[tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The decoder-with-past step, with every piece of state passed in and out: what the
        ONNX export traces (``gpt_simple_onnx.export``), one graph for prefill and decode.

        ``input_ids`` and ``position_ids`` are [B, T]; ``past`` holds each layer's keys and
        values [B, kv_heads, P, head_dim] (P may be 0); ``attention_mask`` [B, P + T] is 1 for
        real tokens and 0 for padding anywhere in the past or the new tokens. New token ``t``
        sees every real key at index ``<= P + t``, so causality is by index and positions come
        only from ``position_ids``. Returns logits [B, T, vocab] and each layer's present keys
        and values [B, kv_heads, P + T, head_dim].
        """
        x = self.wte(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype)
        mask = additive_mask(attention_mask, input_ids.shape[1], x.dtype)
        presents = []
        for block, layer_past in zip(self.h, past, strict=True):
            x, present = block.forward_past(x, cos, sin, layer_past, mask)
            presents.append(present)
        return self._head(x), presents

    @torch.inference_mode()
    def step(
        self,
        cache: KVCache,
        slots: Sequence[int],
        tokens: Sequence[Sequence[int]],
        every_position: bool = False,
    ) -> Tensor:
        """Append ``tokens[i]`` to the sequence in cache slot ``slots[i]``; return the logits
        at each row's last new token, [B, vocab] (``every_position``: at every new token,
        [B, T, vocab], a row's padding positions meaningless).

        Rows may bring different numbers of tokens: they are right-padded to the longest, each
        token gets its row's true position (cached length + offset; padding never counts), and
        padding is neither written to the cache nor visible to any real query. Slots must be
        distinct; pass them ascending and contiguous to read the cache without a gather.
        """
        device = self.wte.weight.device
        counts = [len(t) for t in tokens]
        starts = [cache.lengths[s] if s < len(cache.lengths) else 0 for s in slots]
        span = max(a + n for a, n in zip(starts, counts, strict=True))
        cache.reserve(max(slots) + 1, span)

        T = max(counts)
        ids = torch.tensor([list(t) + [0] * (T - len(t)) for t in tokens], device=device)
        start = torch.tensor(starts, device=device)[:, None]  # [B, 1]
        count = torch.tensor(counts, device=device)[:, None]  # [B, 1]
        offset = torch.arange(T, device=device)[None]  # [1, T]
        valid = offset < count  # [B, T]
        positions = start + offset  # [B, T]; padding queries' results are discarded
        # Causal over the row's cache: a real query sees its row's cached and earlier new
        # tokens. Padding keys are never written, so no real query can see them.
        mask = torch.arange(span, device=device)[None, None] <= positions[:, :, None]
        slot_ids = torch.tensor(slots, device=device)
        contiguous = list(slots) == list(range(slots[0], slots[0] + len(slots)))
        step = CachedStep(
            read=slice(slots[0], slots[0] + len(slots)) if contiguous else slot_ids,
            write_slot=slot_ids[:, None].expand_as(valid)[valid],
            write_pos=positions[valid],
            valid=valid,
            mask=mask[:, None],  # [B, 1, T, span]: broadcast over heads
            span=span,
        )

        x = self.wte(ids)
        cos, sin = self.rotary(positions, x.dtype)
        for i, block in enumerate(self.h):
            x = block(x, cos, sin, (cache.k[i], cache.v[i]), step)
        for s, a, n in zip(slots, starts, counts, strict=True):
            cache.lengths[s] = a + n
        if every_position:
            return self._head(x)
        last = x[torch.arange(len(slots), device=device), count[:, 0] - 1]  # [B, n_embd]
        return self._head(last)
