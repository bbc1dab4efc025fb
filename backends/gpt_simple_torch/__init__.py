"""The PyTorch eager backend for gpt-simple trainer checkpoints.

* :mod:`gpt_simple_torch.model`: the architecture in one file (training and cached inference);
* :mod:`gpt_simple_torch.loading`: weights from ``model.safetensors`` / ``pytorch_model.bin``;
* :mod:`gpt_simple_torch.plugin`: the backend the core drives (the entry point; torch-free at
  import time, so nothing is imported here either).
"""
