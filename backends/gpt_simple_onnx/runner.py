"""The engine's forward-step protocol over a decoder-with-past ONNX graph.

Design of the KV cache (numpy arrays fed to and returned by the graph):

* Rows that the core runs together live in one :class:`_Block`: every layer's keys and values
  side by side, ``[rows, kv_heads, width, head_dim]``, exactly the graph's
  ``past_key_values`` inputs, plus a ``[rows, width]`` mask of which positions are real.
* While the core keeps calling the same set of rows (the steady state of decoding), a step
  feeds the block as the past and the graph's ``present`` outputs become the block: no copy
  on our side. The graph's concatenation of past and new keys is the one copy per step that
  this layout costs (it is the same in every Optimum-style runtime).
* When the set changes (rows admitted, released or called separately) the rows of the call
  are gathered into a new block: each row's real positions are copied out of its old block
  (holes dropped) and laid side by side, padded to the longest. One copy of those rows' cache,
  once per change of the set, not per step. The old blocks keep their other rows.
* Rows of one call may bring different numbers of new tokens: they are right-padded to the
  longest and the padding enters the cache as masked holes (never seen by a real query:
  causality is by index and the mask hides padding). A block whose width has grown well past
  its longest row is compacted by the same gather.
* Positions are per row: a row's next position is its count of real tokens, so padding never
  shifts RoPE. A released row's slot in its block is just forgotten.

Nothing changes state until the graph has run, so a failing call leaves every row as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt_simple.plugins import OVERFLOW_EXTRAPOLATE, LoadedModel, Tokenizer
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_onnx import layout

if TYPE_CHECKING:
    import onnxruntime

#: Compact a block when its width exceeds its longest row by this much (and by half of it).
COMPACT_SLACK = 64
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class _Block:
    """Rows that run together, their caches side by side (see the module docstring)."""

    def __init__(
        self, rows: list[int], past: list[np.ndarray], mask: np.ndarray, lengths: np.ndarray
    ) -> None:
        self.rows: list[int | None] = list(rows)  # None: a row that left (released or moved)
        self.past = past  # graph order: layer 0 key, layer 0 value, layer 1 key, ...
        self.mask = mask  # [rows, width] int64, 1 at real positions
        self.lengths = lengths  # [rows] int64: real tokens so far = each row's next position

    def runs_exactly(self, rows: Sequence[int]) -> bool:
        """Whether a call of ``rows`` can use this block as it is."""
        if None in self.rows or set(self.rows) != set(rows):
            return False
        longest = int(self.lengths.max(initial=0))
        return self.mask.shape[1] <= longest + max(COMPACT_SLACK, longest // 2)

    def real_positions(self, row: int) -> list[np.ndarray]:
        """``row``'s keys and values ``[kv_heads, length, head_dim]`` without holes (views
        when it has none)."""
        i = self.rows.index(row)
        keep = self.mask[i].astype(bool)
        if keep.all():
            return [tensor[i] for tensor in self.past]
        return [tensor[i][:, keep] for tensor in self.past]


class OnnxModel(LoadedModel):
    """A decoder-with-past ONNX graph driven by the core's decode loop."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        config: ModelConfig,
        tokenizer: Tokenizer,
        *,
        device: str,
        dtype: str,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        self.session = session
        self.config = config
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.context_length = config.n_positions
        self.context_overflow = OVERFLOW_EXTRAPOLATE  # positions are inputs: RoPE keeps going
        self.notes = dict(notes or {})
        self._past_names = layout.past_names(config.n_layer)
        types = {arg.name: arg.type for arg in session.get_inputs()}
        self._kv_dtype = _NUMPY_TYPES[types[self._past_names[0]]]
        self._blocks: dict[int, _Block] = {}  # row -> the block holding its cache

    # The protocol ----------------------------------------------------------------------------
    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        self.check_forward_arguments(rows, tokens)
        if not rows:
            return np.empty((0, self.config.vocab_size), dtype=np.float32)
        current = self._blocks.get(rows[0])
        block = current if current is not None and current.runs_exactly(rows) else None
        if block is None:
            block = self._gather(rows)
        index = {row: i for i, row in enumerate(block.rows)}
        order = [index[row] for row in rows]

        width = max(len(new) for new in tokens)
        ids = np.zeros((len(order), width), dtype=np.int64)
        counts = np.zeros(len(order), dtype=np.int64)
        for i, new in zip(order, tokens, strict=True):
            ids[i, : len(new)] = new
            counts[i] = len(new)
        real = (np.arange(width)[None, :] < counts[:, None]).astype(np.int64)
        mask = np.concatenate([block.mask, real], axis=1)
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": block.lengths[:, None] + np.arange(width, dtype=np.int64)[None, :],
            **dict(zip(self._past_names, block.past, strict=True)),
        }
        logits, *presents = self.session.run(None, feed)

        block.past, block.mask, block.lengths = presents, mask, block.lengths + counts
        self._adopt(block)
        last = logits[np.arange(len(order)), counts - 1]  # each row's last real token
        return np.asarray(last[order], dtype=np.float32)

    def release(self, rows: Sequence[int]) -> None:
        for row in rows:
            block = self._blocks.pop(row, None)
            if block is not None:
                block.rows[block.rows.index(row)] = None

    def close(self) -> None:
        self._blocks.clear()
        self.session = None

    # Blocks --------------------------------------------------------------------------------
    def _gather(self, rows: Sequence[int]) -> _Block:
        """A new block holding ``rows``' caches (empty for new rows), padded to the longest.
        Old blocks are left as they are until the call succeeds (:meth:`_adopt`)."""
        parts = [
            self._blocks[row].real_positions(row) if row in self._blocks else None for row in rows
        ]
        lengths = np.array([0 if p is None else p[0].shape[1] for p in parts], dtype=np.int64)
        width = int(lengths.max())
        shape = (len(rows), self.config.kv_heads, width, self.config.head_dim)
        past = [np.zeros(shape, dtype=self._kv_dtype) for _ in self._past_names]
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, part in enumerate(parts):
            if part is None:
                continue
            n = lengths[i]
            mask[i, :n] = 1
            for tensor, row_part in zip(past, part, strict=True):
                tensor[i, :, :n] = row_part
        return _Block(list(rows), past, mask, lengths)

    def _adopt(self, block: _Block) -> None:
        """Make ``block`` the home of its rows; their slots in older blocks are vacated."""
        for row in block.rows:
            if row is None:
                continue
            old = self._blocks.get(row)
            if old is not None and old is not block:
                old.rows[old.rows.index(row)] = None
            self._blocks[row] = block
