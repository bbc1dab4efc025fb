"""The architectures the ONNX suite exports, and loading both backends on one checkpoint."""

from __future__ import annotations

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.protocol import LoadRequest
from gpt_simple_onnx.plugin import OnnxBackend
from gpt_simple_onnx.runner import OnnxModel
from gpt_simple_torch.plugin import TorchBackend, TorchModel

#: Every architecture option of the spec, spread over four tiny models.
ARCHITECTURES: dict[str, dict] = {
    # Llama-like: rmsnorm, gated swish MLP, tied head, plain RoPE
    "default": {},
    # grouped-query attention, linear RoPE scaling, untied head, q/k/v biases only
    "gqa-linear-untied": {
        "n_kv_head": 2,
        "rope_scaling_type": "linear",
        "rope_scaling_factor": 4.0,
        "tie_word_embeddings": False,
        "qkv_bias": True,
    },
    # layernorm, plain MLP with gelu, every bias, NTK RoPE scaling
    "layernorm-mlp-gelu-ntk": {
        "norm": "layernorm",
        "mlp_type": "mlp",
        "activation": "gelu",
        "use_bias": True,
        "rope_scaling_type": "ntk",
        "rope_scaling_factor": 8.0,
        "rope_base": 500.0,
    },
    # multi-query attention (one kv head), gated relu, explicit FFN width, out/MLP biases
    "mqa-relu": {
        "n_head": 8,
        "n_kv_head": 1,
        "activation": "relu",
        "intermediate_size": 96,
        "attn_out_bias": True,
        "mlp_bias": True,
    },
}
#: Exported with the weights in ``model.onnx.data``, to cover the external-data path.
EXTERNAL_DATA = {"gqa-linear-untied"}


#: One thread: the suite shares 2 cores.
CPU = LoadRequest(device="cpu", threads=1)


def torch_model(info: CheckpointInfo) -> TorchModel:
    return TorchBackend().load(info, CPU)


def onnx_model(info: CheckpointInfo) -> OnnxModel:
    return OnnxBackend().load(info, CPU)
