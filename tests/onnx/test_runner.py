"""The runner against the PyTorch backend, both driven through the forward-step protocol:
logits within 1e-4 for prefill and cached decode steps, with rows of different lengths,
joining, leaving and called out of order."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_onnx.runner import OnnxModel
from gpt_simple_torch.plugin import TorchModel
from tests.onnx.conftest import Exported
from tests.onnx.helpers import ARCHITECTURES, onnx_model, torch_model

pytestmark = pytest.mark.onnx

TOLERANCE = 1e-4


def prompt(seed: int, length: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 300, size=length).tolist()


class Pair:
    """The same calls to both backends; every answer compared."""

    def __init__(self, ours: OnnxModel, reference: TorchModel) -> None:
        self.ours, self.reference = ours, reference
        self.worst = 0.0

    def call(self, feed: dict[int, list[int]]) -> np.ndarray:
        rows, tokens = list(feed), list(feed.values())
        got = self.ours.forward(rows, tokens)
        expected = self.reference.forward(rows, tokens)
        assert got.shape == expected.shape and got.dtype == np.float32
        diff = float(np.abs(got - expected).max())
        assert diff <= TOLERANCE, f"rows {rows}: max abs diff {diff}"
        assert float(np.abs(expected).max()) > 1.0  # not a comparison of near-zero logits
        self.worst = max(self.worst, diff)
        return got

    def release(self, *rows: int) -> None:
        self.ours.release(rows)
        self.reference.release(rows)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_prefill_and_decode_match_torch(
    name: str, exported: Exported, checkpoints: dict[str, CheckpointInfo]
) -> None:
    pair = Pair(onnx_model(exported(name)), torch_model(checkpoints[name]))
    # prompts of different lengths in one call (padded), then cached decode steps
    pair.call({0: prompt(1, 3), 1: prompt(2, 11), 2: prompt(3, 1), 3: prompt(4, 6)})
    for step in range(6):
        pair.call({row: [10 + step + row] for row in range(4)})
    print(f"{name}: max abs diff vs torch {pair.worst:.2e}")


def test_rows_joining_leaving_and_out_of_order(
    exported: Exported, checkpoints: dict[str, CheckpointInfo]
) -> None:
    name = "gqa-linear-untied"
    ours = onnx_model(exported(name))
    pair = Pair(ours, torch_model(checkpoints[name]))
    pair.call({0: prompt(1, 4), 1: prompt(2, 9)})
    pair.call({0: [5], 1: [6]})
    # row 2 is admitted alone (the core prefills admissions in their own call) ...
    pair.call({2: prompt(3, 7)})
    # ... then decodes with the others: their caches are gathered into one block
    pair.call({0: [7], 1: [8], 2: [9]})
    pair.call({2: [1], 0: [2], 1: [3]})  # the same rows in another order: no gather
    block = ours._blocks[0]
    pair.call({1: [4], 2: [5], 0: [6]})
    assert ours._blocks[0] is block and ours._blocks[2] is block
    # a row leaves and its id comes back as a new sequence in the same call as decoders
    pair.release(1)
    pair.call({0: [1], 1: prompt(5, 5), 2: [2]})
    # a prompt arriving in chunks, and a subset of rows called alone
    pair.call({3: prompt(6, 4)})
    pair.call({3: prompt(7, 3)})
    pair.call({0: [3]})
    pair.call({0: [4], 1: [5], 2: [6], 3: [7]})
    pair.release(0, 1, 2, 3)
    assert ours._blocks == {}


def test_release_makes_a_row_start_empty(exported: Exported) -> None:
    model = onnx_model(exported("default"))
    first = model.forward([0], [prompt(1, 5)])
    model.forward([0], [[3]])
    model.release([0])
    again = model.forward([0], [prompt(1, 5)])
    np.testing.assert_array_equal(first, again)


def test_a_wide_block_is_compacted(
    exported: Exported, checkpoints: dict[str, CheckpointInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right-padded new tokens become masked holes; a block much wider than its longest row
    is gathered again without them."""
    ours = onnx_model(exported("default"))
    pair = Pair(ours, torch_model(checkpoints["default"]))
    pair.call({0: prompt(1, 2), 1: prompt(2, 2)})
    for step in range(4):  # one row brings 12 tokens, the other 1 (padded to 12): holes
        pair.call({0: prompt(10 + step, 12), 1: [step]})
        pair.call({0: [step], 1: prompt(20 + step, 12)})
    block = ours._blocks[0]
    assert (block.mask.shape[1], block.lengths.max()) == (2 + 8 * 12, 2 + 4 * 13)
    monkeypatch.setattr("gpt_simple_onnx.runner.COMPACT_SLACK", 4)  # 98 > 54 + 54 / 2
    pair.call({0: [1], 1: [2]})
    block = ours._blocks[0]
    assert block.mask.shape[1] == block.lengths.max() == 2 + 4 * 13 + 1


def test_a_failing_call_changes_nothing(exported: Exported) -> None:
    model = onnx_model(exported("default"))
    model.forward([0, 1], [prompt(1, 4), prompt(2, 3)])
    before = {row: (id(block), block.lengths.copy()) for row, block in model._blocks.items()}
    with pytest.raises(Exception, match=r"indices|out of"):
        model.forward([0, 1, 2], [[1], [10**6], [2]])  # an id outside the vocabulary
    after = {row: (id(block), block.lengths) for row, block in model._blocks.items()}
    assert before.keys() == after.keys()
    for row in before:
        assert before[row][0] == after[row][0]
        np.testing.assert_array_equal(before[row][1], after[row][1])


def test_forward_rejects_malformed_calls(exported: Exported) -> None:
    model = onnx_model(exported("default"))
    with pytest.raises(ValueError, match="distinct"):
        model.forward([1, 1], [[1], [2]])
    with pytest.raises(ValueError, match="at least one"):
        model.forward([0], [[]])
    assert model.forward([], []).shape == (0, model.config.vocab_size)
