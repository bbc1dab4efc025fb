"""The HipGPT forward pass in numpy, float32, quirks and all (spec section 2).

HipGPT (docs-era commit 003041c) computes, for a window of exactly S ids::

    x = tok_emb[ids] + pos_emb                      (an id outside [0, V): an all-zero row)
    per layer:  x = x + dropout(attention(LN1(x)))
                x = x + dropout(ffn(LN2(x)))
    logits = x @ W_out                              (no final LayerNorm)

Three quirks are reproduced on purpose, because HipGPT's checkpoints were trained with them and
its outputs depend on them:

* Q, K and V are not column slices of ``qkv``: the flat [S, 3E] buffer is cut into three
  contiguous blocks of S*E floats, each read as [S, E];
* there is no causal mask (nor a padding mask): every position attends to all S positions;
* dropout (p = 0.1) is always on and deterministic: whether an element survives depends only on
  its flat index in the [S, E] tensor. No element below index 185,384 survives, so in models
  with S*E <= 185,384 (the default sizes) every sub-layer output is zero and the model reduces
  to ``(tok_emb[ids] + pos_emb) @ W_out``.

Shapes: B rows per batch, S positions, E width, H heads of hd = E / H, F FFN width, V vocab.
"""

from __future__ import annotations

import numpy as np

from gpt_simple_native.format import HipGPTWeights, LayerWeights

LN_EPS = np.float32(1e-5)
DROPOUT_P = np.float32(0.1)
# HipGPT divides a kept value by (1.0f - p), computed in float32; dividing (rather than
# multiplying by 1/0.9) keeps the results bit-identical.
DROPOUT_DIVISOR = np.float32(1.0) - DROPOUT_P


def dropout_keep_mask(count: int) -> np.ndarray:
    """Which of ``count`` flat indices HipGPT's dropout keeps: bool [count].

    HipGPT seeds a one-step xorwow generator per element from the element's index i and its
    256-thread block, all in wrapping uint32 arithmetic, and drops the element when
    float32(t + 1) / 2^32 < 0.1f.
    """
    u32 = np.uint32
    i = np.arange(count, dtype=u32)
    block = i // u32(256)
    t = i * block + u32(1)  # xorwow state d (idx * blockIdx.x + 1), wraps mod 2^32
    t ^= t >> u32(2)
    t ^= t << u32(1)
    a = i + u32(1)  # xorwow state a
    t ^= a ^ (a << u32(4))
    r = (t + u32(1)).astype(np.float32) / np.float32(2.0**32)  # + counter (1), wraps
    return ~(r < DROPOUT_P)


def project_in_order(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for [..., K] x [K, N], summed over k in ascending order in float32.

    HipGPT's matmul kernel keeps one float32 accumulator per output and adds the k terms in
    order; BLAS sums in another order and lands a few ulps away. Used for the output
    projection, where it costs K vector operations on [B, V] and makes logits of models whose
    layers are dropped bit-identical to HipGPT's, so greedy near-ties break the same way.
    """
    out = np.zeros((*x.shape[:-1], w.shape[1]), dtype=np.float32)
    for k in range(w.shape[0]):
        out += x[..., k, None] * w[k]
    return out


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis: biased variance, eps inside the square root."""
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return gamma * centred / np.sqrt(variance + LN_EPS) + beta


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, max-subtracted; overwrites ``scores``."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


class HipGPTModel:
    """A HipGPT model in memory: call it on windows of S ids to get logits."""

    def __init__(self, weights: HipGPTWeights) -> None:
        self.weights = weights
        self.dims = dims = weights.dims
        # The mask depends only on the position in the [S, E] tensor: compute it once.
        self.keep = dropout_keep_mask(dims.S * dims.E).reshape(dims.S, dims.E)
        # When it keeps nothing, every sub-layer adds exactly zero to x: skipping the layers
        # gives bit-identical results (np.where would turn even inf or nan into 0).
        self.layers_matter = bool(self.keep.any())

    def dropout(self, a: np.ndarray) -> np.ndarray:
        """HipGPT's always-on dropout of a [B, S, E] sub-layer output."""
        return np.where(self.keep, a / DROPOUT_DIVISOR, np.float32(0.0))

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """[B, S] ids -> [B, S, E]: token plus position embedding."""
        w = self.weights
        valid = (windows >= 0) & (windows < self.dims.V)
        x = w.token_embedding[np.where(valid, windows, 0)] + w.position_embedding
        x[~valid] = 0.0  # HipGPT writes a zero row, position embedding included
        return x

    def attention(self, h: np.ndarray, layer: LayerWeights) -> np.ndarray:
        """Multi-head self-attention of a normalised [B, S, E] input, before dropout."""
        B, S, E = h.shape
        H = self.dims.H
        hd = E // H
        qkv = h @ layer.w_qkv + layer.b_qkv  # [B, S, 3E]
        # The flat-split quirk: each row's [S*3E] buffer is three consecutive [S, E] blocks.
        q, k, v = qkv.reshape(B, 3, S, E).transpose(1, 0, 2, 3)  # each [B, S, E]

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(B, S, H, hd).transpose(0, 2, 1, 3)  # [B, H, S, hd]

        scale = np.float32(1.0) / np.sqrt(np.float32(hd))
        scores = (heads(q) @ heads(k).transpose(0, 1, 3, 2)) * scale  # [B, H, S, S], no mask
        context = softmax(scores) @ heads(v)  # [B, H, S, hd]
        context = context.transpose(0, 2, 1, 3).reshape(B, S, E)  # heads side by side
        return context @ layer.w_o + layer.b_o  # [B, S, E]

    def feed_forward(self, h: np.ndarray, layer: LayerWeights) -> np.ndarray:
        """ReLU MLP of a normalised [B, S, E] input, before dropout."""
        hidden = np.maximum(h @ layer.w_1 + layer.b_1, np.float32(0.0))  # [B, S, F]
        return hidden @ layer.w_2 + layer.b_2  # [B, S, E]

    def hidden_states(self, windows: np.ndarray) -> np.ndarray:
        """[B, S] ids -> [B, S, E] output of the last layer."""
        x = self.embed(windows)
        if not self.layers_matter:
            return x
        for layer in self.weights.layers:
            h = layer_norm(x, layer.ln1_gamma, layer.ln1_beta)
            x = x + self.dropout(self.attention(h, layer))
            h = layer_norm(x, layer.ln2_gamma, layer.ln2_beta)
            x = x + self.dropout(self.feed_forward(h, layer))
        return x

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """[B, S] ids -> [B, S, V] logits at every position (what HipGPT's forward returns)."""
        return project_in_order(self.hidden_states(self._check(windows)), self.weights.w_out)

    def last_logits(self, windows: np.ndarray) -> np.ndarray:
        """[B, S] ids -> [B, V] logits at position S-1 (what generation samples from)."""
        last = self.hidden_states(self._check(windows))[:, -1]  # [B, E]
        return project_in_order(last, self.weights.w_out)

    def _check(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows)
        if windows.ndim != 2 or windows.shape[1] != self.dims.S:
            raise ValueError(f"windows must be [B, {self.dims.S}] ids, got {windows.shape}")
        return windows
