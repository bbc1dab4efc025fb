"""The numpy forward pass against HipGPT's own logits, and against a slow reference written
here from the spec for a shape the fixtures do not cover."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gpt_simple_native.format import read_weights
from gpt_simple_native.model import HipGPTModel, dropout_keep_mask
from tests.native.hipgpt_writer import TinyHipGPT, random_model

# prompt number of logits_prompt{n}.f32 -> its prompt (spec section 6)
LOGIT_PROMPTS = {
    1: "The assert statement",
    2: "for each item in the list",
    3: "An exception is raised when",
    4: "The value of the expression is used",  # start of the long prompt
    5: "café naïve “smart quotes” λ",
}


@pytest.fixture(scope="module")
def reference_model(native_reference: Path) -> HipGPTModel:
    return HipGPTModel(read_weights(native_reference / "gpt_checkpoint.bin"))


def first_window(native_reference: Path, prompt_start: str) -> list[int]:
    cases = json.loads((native_reference / "expected_outputs.json").read_text(encoding="utf-8"))
    for case in cases["cases"]:
        if case["prompt"].startswith(prompt_start) and case.get("first_window"):
            return case["first_window"]
    raise AssertionError(f"no case for {prompt_start!r}")


@pytest.mark.parametrize("number", sorted(LOGIT_PROMPTS))
def test_logits_of_the_fixture_prompts(
    native_reference: Path, reference_model: HipGPTModel, number: int
) -> None:
    window = first_window(native_reference, LOGIT_PROMPTS[number])
    expected = np.fromfile(native_reference / f"logits_prompt{number}.f32", dtype="<f4")
    logits = reference_model.logits(np.array([window]))
    assert logits.shape == (1, 32, 1000) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[0], expected.reshape(32, 1000), rtol=0, atol=1e-5)
    # The output projection sums in HipGPT's order: at these sizes the logits are bit-identical.
    np.testing.assert_array_equal(logits[0], expected.reshape(32, 1000))
    last = reference_model.last_logits(np.array([window, window]))
    np.testing.assert_array_equal(last, np.stack([logits[0, -1], logits[0, -1]]))


def test_small_models_reduce_to_embeddings_times_w_out(reference_model: HipGPTModel) -> None:
    assert not reference_model.layers_matter  # S*E = 4096 <= 185,384: every element dropped


def test_seq1536_layers_matter(native_reference: Path) -> None:
    model = HipGPTModel(read_weights(native_reference / "seq1536" / "gpt_checkpoint_seq1536.bin"))
    assert model.layers_matter
    window = np.zeros((1, 1536), dtype=np.int64)
    window[0, -6:] = [211, 108, 195, 669, 116, 385]  # "The assert statement"
    expected = np.fromfile(
        native_reference / "seq1536" / "logits_prompt1_rows1408-1535.f32", dtype="<f4"
    ).reshape(128, 1000)
    logits = model.logits(window)[0]
    np.testing.assert_allclose(logits[1408:], expected, rtol=0, atol=1e-4)

    ids = list(window[0])  # greedy, as HipGPT: ", , , " (id 105 three times)
    generated = []
    for _ in range(3):
        next_id = int(np.argmax(model.last_logits(np.array([ids[-1536:]]))[0]))
        generated.append(next_id)
        ids.append(next_id)
    assert generated == [105, 105, 105]


def test_dropout_threshold() -> None:
    keep = dropout_keep_mask(200_000)
    assert not keep[:185_384].any()
    assert keep[185_384]
    assert keep.dtype == bool


# --- an odd shape, checked against a slow reference --------------------------------------------

# S*E = 200,000 > 185,384, so the dropout keeps the tail and the layers change the logits.
ODD = {"V": 67, "S": 1000, "E": 200, "L": 3, "H": 5, "F": 72}
U32 = 0xFFFFFFFF
DROP_BELOW = 429_496_736.0  # float32(0.1) * 2^32: r < 0.1f  <=>  float32(t + 1) < this


def _to_float32(value: int) -> float:
    return struct.unpack("<f", struct.pack("<f", float(value)))[0]


def slow_keep_mask(count: int) -> np.ndarray:
    """The spec's dropout rule, element by element in Python integers."""
    keep = np.zeros(count, dtype=bool)
    for i in range(185_000, count):  # the spec: nothing below 185,384 survives
        t = (i * (i // 256) + 1) & U32
        t ^= t >> 2
        t ^= (t << 1) & U32
        t ^= (i + 1) ^ (((i + 1) << 4) & U32)
        keep[i] = _to_float32((t + 1) & U32) >= DROP_BELOW
    return keep


def slow_logits(model: TinyHipGPT, window: list[int], keep: np.ndarray) -> np.ndarray:
    """Spec section 2 for one window, in float64, one head at a time: [S, V]."""
    S, E, H, V = model.S, model.E, model.H, model.V
    hd = E // H
    keep = keep.reshape(S, E)
    x = np.zeros((S, E))
    for t, token in enumerate(window):
        if 0 <= token < V:
            x[t] = model.token_embedding[token].astype(np.float64) + model.position_embedding[t]

    def norm(v: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
        mu = v.mean(axis=1, keepdims=True)
        var = ((v - mu) ** 2).mean(axis=1, keepdims=True)
        return gamma * (v - mu) / np.sqrt(var + 1e-5) + beta

    def dropout(a: np.ndarray) -> np.ndarray:
        return np.where(keep, a / np.float64(np.float32(1) - np.float32(0.1)), 0.0)

    for layer in model.layers:
        p = {name: value.astype(np.float64) for name, value in layer.items()}
        flat = (norm(x, p["ln1_gamma"], p["ln1_beta"]) @ p["w_qkv"] + p["b_qkv"]).reshape(-1)
        q, k, v = (flat[n * S * E : (n + 1) * S * E].reshape(S, E) for n in range(3))
        context = np.zeros((S, E))
        for head in range(H):
            cols = slice(head * hd, (head + 1) * hd)
            scores = q[:, cols] @ k[:, cols].T / np.sqrt(hd)
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            context[:, cols] = weights @ v[:, cols]
        x = x + dropout(context @ p["w_o"] + p["b_o"])
        hidden = np.maximum(norm(x, p["ln2_gamma"], p["ln2_beta"]) @ p["w_1"] + p["b_1"], 0.0)
        x = x + dropout(hidden @ p["w_2"] + p["b_2"])
    return x @ model.w_out.astype(np.float64)


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyHipGPT, HipGPTModel]:
    written = random_model(**ODD, seed=7)
    path = written.write(tmp_path_factory.mktemp("odd") / "odd.bin")
    return written, HipGPTModel(read_weights(path))


def test_odd_shape_matches_the_slow_reference(odd_model: tuple[TinyHipGPT, HipGPTModel]) -> None:
    written, model = odd_model
    keep = slow_keep_mask(written.S * written.E)
    np.testing.assert_array_equal(model.keep.reshape(-1), keep)
    assert model.layers_matter

    rng = np.random.default_rng(1)
    full = rng.integers(0, written.V, size=written.S)
    padded = np.zeros(written.S, dtype=np.int64)
    padded[-7:] = full[:7]
    out_of_range = full.copy()
    out_of_range[[-1, -3]] = [written.V + 5, -1]  # HipGPT gives these all-zero rows
    windows = np.stack([full, padded, out_of_range])

    logits = model.logits(windows)
    assert logits.shape == (3, written.S, written.V) and logits.dtype == np.float32
    for row, window in enumerate(windows):
        expected = slow_logits(written, list(window), keep)
        np.testing.assert_allclose(logits[row], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(model.last_logits(windows), logits[:, -1])

    # The check has teeth only if the layers change the output.
    embeddings_only = model.embed(windows[:1])[0].astype(np.float64) @ written.w_out
    assert np.abs(logits[0] - embeddings_only).max() > 0.1


def test_rejects_windows_of_the_wrong_length(reference_model: HipGPTModel) -> None:
    with pytest.raises(ValueError, match=r"\[B, 32\]"):
        reference_model.last_logits(np.zeros((1, 31), dtype=np.int64))
