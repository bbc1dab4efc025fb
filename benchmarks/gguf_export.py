"""A benchmark checkpoint as a GGUF file, so llama.cpp runs the very weights our backends run.

The gpt-simple layout (``model/model.safetensors`` + ``model/config.json``) is a Llama
(RMSNorm, gated SwiGLU MLP, RoPE, tied embeddings; ``tests/support/llama.py``), so the file
uses llama.cpp's ``llama`` architecture, written with the ``gguf`` package (the one llama.cpp's
own ``convert_hf_to_gguf.py`` uses). Three variants:

* ``f32``: every tensor F32 (``convert_hf_to_gguf.py --outtype f32``);
* ``q8_0``: every matrix Q8_0, the tied embedding/head included, norms F32
  (``--outtype q8_0``, which quantizes with the same ``gguf.quants`` helpers);
* ``q4_0``: every matrix Q4_0 ("pure" Q4_0; ``llama-quantize Q4_0`` would keep the tied head
  in Q6_K, which is slower, so this is llama.cpp's fastest Q4_0 of this model).

Two things make it load and compute what our torch backend computes:

* RoPE: our model rotates halves (``x1 = x[:d/2]``, ``x2 = x[d/2:]``, as Hugging Face Llama
  does) while llama.cpp's ``llama`` architecture rotates adjacent pairs. The query and key
  rows of every head are reordered as ``convert_hf_to_gguf.py``'s ``LlamaModel.permute``
  does (pair ``(i, i + d/2)`` becomes rows ``2i, 2i + 1``); q·k is unchanged, so the logits
  are too.
* Tokenizer: every benchmark run feeds token ids, so the file carries no vocabulary:
  ``tokenizer.ggml.model = "none"`` with ``llama.vocab_size`` set, which llama.cpp loads as
  ``vocab_size`` dummy tokens (the minimum that loads; tokenizing text would fail, nothing
  here does).

Files are cached under ``benchmarks/work/gguf/`` (ignored by git) and reused. Nothing here
needs llama.cpp; ``python -m benchmarks.gguf_export CHECKPOINT [--variant q8_0]`` writes one.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import WORK

#: Our module names under ``h.{i}.`` -> llama.cpp's tensor names under ``blk.{i}.``.
BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "ln_2": "ffn_norm",
    "attn.q_proj": "attn_q",
    "attn.k_proj": "attn_k",
    "attn.v_proj": "attn_v",
    "attn.c_proj": "attn_output",
    "mlp.c_gate": "ffn_gate",
    "mlp.c_up": "ffn_up",
    "mlp.c_down": "ffn_down",
}
VARIANTS = ("f32", "q8_0", "q4_0")


def gguf_path(checkpoint: Path, variant: str) -> Path:
    """Where the ``variant`` GGUF of ``checkpoint`` is cached."""
    return WORK / "gguf" / f"{checkpoint.name}-{variant}.gguf"


def model_config(checkpoint: Path) -> Mapping[str, Any]:
    """The checkpoint's config with the trainer's defaults filled in, through the public API
    (so the defaults are the core's, not a copy of them)."""
    import gpt_simple

    return gpt_simple.validate_checkpoint(checkpoint, load_tokenizer=False)[2]


def rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q or k projection [heads * d, n_embd] from rotate-half order to llama.cpp's
    adjacent pairs (``convert_hf_to_gguf.py``'s ``LlamaModel.permute``)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _check_supported(config: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> None:
    """Only the Llama-equivalent settings map onto llama.cpp's ``llama`` architecture as-is
    (the benchmark checkpoints use them); anything else would compute something else."""
    wanted = {"activation": "swish", "mlp_type": "gated", "norm": "rmsnorm"}
    wrong = {k: config.get(k) for k, v in wanted.items() if config.get(k) != v}
    if wrong:
        raise ValueError(f"not a Llama-equivalent config (llama.cpp 'llama' arch): {wrong}")
    biases = sorted(k for k in weights if k.endswith(".bias"))
    if biases:
        raise ValueError(f"biases are not exported (first: {biases[0]})")
    if config.get("rope_scaling_type") not in (None, "linear", "ntk"):
        raise ValueError(f"rope_scaling_type {config.get('rope_scaling_type')!r}")


def llama_tensors(
    config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray]]:
    """``weights`` under llama.cpp's names, q and k permuted for its RoPE, fp32."""
    n_head = int(config["n_head"])
    head_dim = int(config["n_embd"]) // n_head
    for key, value in weights.items():
        value = np.ascontiguousarray(value, dtype=np.float32)
        if key == "wte.weight":
            yield "token_embd.weight", value
        elif key == "ln_f.weight":
            yield "output_norm.weight", value
        elif key == "lm_head.weight":
            yield "output.weight", value  # untied head; tied ones reuse token_embd
        else:  # h.{i}.{module}.weight
            _, layer, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            if module == "attn.q_proj":
                value = rope_permute(value, n_head)
            elif module == "attn.k_proj":
                value = rope_permute(value, value.shape[0] // head_dim)
            yield f"blk.{layer}.{BLOCK_NAMES[module]}.{param}", value


def export(checkpoint: Path, variant: str = "f32", out: Path | None = None) -> Path:
    """Write (once) and return the ``variant`` GGUF of ``checkpoint``."""
    import gguf
    from safetensors.numpy import load_file

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    out = out or gguf_path(checkpoint, variant)
    if out.is_file():
        return out
    file_types = {
        "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
        "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
        "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, gguf.GGMLQuantizationType.Q4_0),
    }
    file_type, matrix_type = file_types[variant]
    config = model_config(checkpoint)
    weights = load_file(str(checkpoint / "model" / "model.safetensors"))
    weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}
    _check_supported(config, weights)

    n_embd, n_head = int(config["n_embd"]), int(config["n_head"])
    head_dim = n_embd // n_head
    kv_heads = weights["h.0.attn.k_proj.weight"].shape[0] // head_dim
    ffn = weights["h.0.mlp.c_gate.weight"].shape[0]
    theta = float(config["rope_base"])
    if config.get("rope_scaling_type") == "ntk":  # the trainer raises the base
        theta *= float(config["rope_scaling_factor"])

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch="llama")
    writer.add_name(f"{checkpoint.name}-{variant}")
    writer.add_context_length(int(config["n_positions"]))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(int(config["n_layer"]))
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    if config.get("rope_scaling_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(config["rope_scaling_factor"]))
    writer.add_layer_norm_rms_eps(float(config["norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("none")  # ids in, ids out: no vocabulary needed
    for name, data in llama_tensors(config, weights):
        # as convert_hf_to_gguf.py: 1-D tensors and norms stay F32, matrices take the variant
        qtype = gguf.GGMLQuantizationType.F32 if data.ndim == 1 else matrix_type
        if qtype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(data, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, default="f32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(export(args.checkpoint, args.variant, args.out))


if __name__ == "__main__":
    main()
