"""Reading weights: formats, the compile prefix, strict key/shape checks, refusing pickles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_simple_core.errors import CheckpointError
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_torch.loading import load_model, read_state_dict, store_matrices_transposed
from tests.conftest import REPO_ROOT
from tests.support.checkpoints import random_state_dict, small_config, write_checkpoint
from tests.torch.helpers import full_logits

pytestmark = pytest.mark.torch


def weights_path(checkpoint: Path) -> Path:
    model = checkpoint / "model"
    return next(p for p in (model / "model.safetensors", model / "pytorch_model.bin") if p.exists())


def test_safetensors_and_bin_load_the_same_model(tmp_path: Path, config: ModelConfig) -> None:
    st = write_checkpoint(tmp_path / "st", config, weights_format="safetensors", seed=2)
    pt = write_checkpoint(tmp_path / "pt", config, weights_format="bin", seed=2)
    a = load_model(weights_path(st), config)
    b = load_model(weights_path(pt), config)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not a.training and not a.wte.weight.requires_grad
    np.testing.assert_array_equal(full_logits(a, [1, 2, 3]), full_logits(b, [1, 2, 3]))


@pytest.mark.parametrize("weights_format", ["bin", "safetensors"])
def test_compile_prefix_is_stripped(tmp_path: Path, config: ModelConfig, weights_format) -> None:
    weights = random_state_dict(config, seed=3)
    prefixed = {f"_orig_mod.{key}": value for key, value in weights.items()}
    ckpt = write_checkpoint(tmp_path, config, weights=prefixed, weights_format=weights_format)
    model = load_model(weights_path(ckpt), config)
    np.testing.assert_array_equal(model.wte.weight.numpy(), weights["wte.weight"])


@pytest.mark.parametrize("weights_format", ["bin", "safetensors"])
def test_mismatched_keys_and_shapes_are_named(
    tmp_path: Path, config: ModelConfig, weights_format: str
) -> None:
    weights = random_state_dict(config)
    del weights["h.1.ln_2.weight"]
    weights["h.1.attn.extra.weight"] = np.zeros((4, 4), np.float32)
    weights["h.0.attn.k_proj.weight"] = np.zeros((8, config.n_embd), np.float32)
    ckpt = write_checkpoint(tmp_path, config, weights=weights, weights_format=weights_format)
    with pytest.raises(CheckpointError) as error:
        load_model(weights_path(ckpt), config)
    message = str(error.value)
    assert "missing keys h.1.ln_2.weight" in message
    assert "unexpected keys h.1.attn.extra.weight" in message
    assert "h.0.attn.k_proj.weight has shape [8, 64], config implies [64, 64]" in message


def test_untied_config_needs_lm_head(tmp_path: Path, config: ModelConfig) -> None:
    ckpt = write_checkpoint(tmp_path, config)  # tied weights: no lm_head.weight
    untied = ModelConfig(**{**config.to_dict(), "tie_word_embeddings": False})
    with pytest.raises(CheckpointError, match=r"missing keys lm_head\.weight"):
        load_model(weights_path(ckpt), untied)


class OpensAFile:
    """Unpickling this object would create a file: proof of arbitrary code execution."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bin_needing_arbitrary_unpickling_is_refused(tmp_path: Path, config) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt", config, weights_format="bin")
    path = weights_path(ckpt)
    marker = tmp_path / "code-ran"
    state = torch.load(path, weights_only=True)
    state["trainer_hook"] = OpensAFile(marker)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="arbitrary unpickling") as error:
        load_model(path, config)
    assert "it references io.open" in str(error.value)  # the refused global is named
    assert not marker.exists()


def test_bin_that_is_not_a_state_dict_is_refused(tmp_path: Path, config) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(path)


def test_unreadable_weights_are_reported(tmp_path: Path) -> None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = tmp_path / name
        path.write_bytes(b"not weights at all")
        with pytest.raises(CheckpointError, match=name):
            read_state_dict(path)


def test_cast_to_requested_dtype(tmp_path: Path, config: ModelConfig) -> None:
    ckpt = write_checkpoint(tmp_path, config)
    model = load_model(weights_path(ckpt), config, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rotary.inv_freq.dtype == torch.float32  # angles stay exact
    assert np.isfinite(full_logits(model, [1, 2, 3])).all()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_matrices_stored_transposed_compute_the_same_logits(
    tmp_path: Path, config: ModelConfig, tied: bool, weights_format: str
) -> None:
    config = ModelConfig(**{**config.to_dict(), "tie_word_embeddings": tied})
    ckpt = write_checkpoint(tmp_path, config, weights_format=weights_format, seed=4)
    model = load_model(weights_path(ckpt), config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    expected = full_logits(model, [5, 1, 4, 2])
    store_matrices_transposed(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():
        assert torch.equal(value, before[key]), key  # same shapes, same values
    matrices = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if tied:
        matrices.append(model.wte.weight)
    # [in, out] in memory: a column of W (one input's weights to every output) is contiguous;
    # fused q/k/v and gate/up sit side by side in one such matrix
    assert matrices and all(w.stride(0) == 1 and not w.is_contiguous() for w in matrices)
    np.testing.assert_allclose(full_logits(model, [5, 1, 4, 2]), expected, rtol=1e-5, atol=1e-5)


def fused_owners(model) -> list:
    return [m for m in model.modules() if hasattr(m, "fusable")]


def logits_of(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch).logits


@pytest.mark.parametrize("mlp_type", ["gated", "mlp"])
def test_fused_projections_are_bitwise_the_linears_own(
    tmp_path: Path, config: ModelConfig, mlp_type: str
) -> None:
    """q/k/v (and gate/up) as one product give exactly the separate products, at every batch
    size; each linear's weight is a view into the fused matrix, so state_dict is unchanged."""
    config = ModelConfig(**{**config.to_dict(), "mlp_type": mlp_type, "qkv_bias": True})
    model = load_model(weights_path(write_checkpoint(tmp_path, config, seed=5)), config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    store_matrices_transposed(model)
    owners = fused_owners(model)
    assert len(owners) == config.n_layer * (2 if mlp_type == "gated" else 1)
    for owner in owners:
        storages = {linear.weight.untyped_storage().data_ptr() for linear in owner.fusable()}
        assert owner.fused is not None and len(storages) == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    generator = torch.Generator().manual_seed(0)
    for rows, length in ((1, 1), (3, 9), (17, 5)):
        batch = torch.randint(0, config.vocab_size, (rows, length), generator=generator)
        fused = logits_of(model, batch)
        kept = [owner.fused for owner in owners]
        for owner in owners:
            owner.fused = None  # the same weights, one product per linear
        separate = logits_of(model, batch)
        for owner, fusion in zip(owners, kept, strict=True):
            owner.fused = fusion
        assert torch.equal(fused, separate), (rows, length)


def test_fused_projections_follow_the_module_when_it_changes(
    tmp_path: Path, config: ModelConfig
) -> None:
    """Weights updated in place are seen by the fused product (shared storage); a converted
    module (``.double()``) rebinds its parameters, and the linears run one by one."""
    ckpt = write_checkpoint(tmp_path, config, seed=6)
    model, reference = (load_model(weights_path(ckpt), config) for _ in range(2))
    for loaded in (model, reference):
        store_matrices_transposed(loaded)
    for owner in fused_owners(reference):
        owner.fused = None  # the same layout, one product per linear
    batch = torch.tensor([[5, 1, 4, 2, 3]])
    unchanged = logits_of(model, batch)
    other = {k: torch.from_numpy(v) for k, v in random_state_dict(config, seed=7).items()}
    for loaded in (model, reference):
        loaded.load_state_dict(other)
    updated = logits_of(model, batch)
    assert torch.equal(updated, logits_of(reference, batch))
    assert not torch.allclose(updated, unchanged)
    for loaded in (model, reference):
        loaded.double()
    stale = fused_owners(model)[0].fused
    assert stale.weight.dtype == torch.float32  # what a product through it would still read
    assert torch.equal(logits_of(model, batch), logits_of(reference, batch))


PEAK_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_torch.loading import load_model, store_matrices_transposed

def status(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return 1024 * int(next(line for line in lines if line.startswith(key)).split()[1])

torch.set_num_threads(1)
config = ModelConfig.from_file(Path(sys.argv[1]) / "model" / "config.json")
# Page in the code a forward runs (tens of MB of kernels) with a tiny model first, so the
# measurement below sees the weights, not the libraries.
from gpt_simple_torch.model import GPT
warm = ModelConfig(**{**config.to_dict(), "n_embd": 64, "n_head": 2, "n_layer": 1,
                      "intermediate_size": None})
GPT(warm)(input_ids=torch.tensor([[1, 2, 3]]))
del warm
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
model = load_model(Path(sys.argv[2]), config)
store_matrices_transposed(model)  # as the plugin loads it: a copy of every matrix
model(input_ids=torch.tensor([[1, 2, 3]]))  # touches every weight
print(json.dumps({"growth": status("VmHWM:") - before}))
"""


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_loading_peaks_near_one_copy_of_the_weights(
    tmp_path: Path, vocab_tokens: int, weights_format: str
) -> None:
    """Peak RSS growth while loading (and re-laying out, and running once) stays near the
    weights' size."""
    config = small_config(vocab_tokens, n_embd=512, n_layer=4, n_head=8)
    ckpt = write_checkpoint(tmp_path, config, weights_format=weights_format)
    weight_bytes = 4 * config.param_count()
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(ckpt), str(weights_path(ckpt))],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"PATH": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path)},
    )
    growth = json.loads(result.stdout)["growth"]
    print(f"{weights_format}: peak RSS growth {growth / weight_bytes:.2f}x of {weight_bytes} B")
    # two copies (initialise, then load) would be 2x; the lower bound shows it did measure
    assert 0.5 * weight_bytes < growth < 1.3 * weight_bytes


def test_fusing_linears_with_and_without_a_bias_is_refused() -> None:
    """One fused product adds one bias vector: a mix would silently drop some biases."""
    from gpt_simple_torch.model import FusedLinears

    linears = [torch.nn.Linear(4, 3, bias=True), torch.nn.Linear(4, 2, bias=False)]
    with pytest.raises(ValueError, match="a bias each, or none"):
        FusedLinears(linears, release=lambda tensor: None)
