"""The gpt-simple trainer's checkpoint format (the ``gpt-simple-lm`` package), as a plugin.

* :mod:`gpt_simple_lm_format.plugin`: the entry point; claims checkpoint and run directories;
* :mod:`gpt_simple_lm_format.layout`: how checkpoints and run directories are resolved;
* :mod:`gpt_simple_lm_format.config`: the model config (``model/config.json``);
* :mod:`gpt_simple_lm_format.tokenizer`: the run's Hugging Face ``tokenizer.json``.

Backends that run this format (torch, onnx) build on these modules; none of them imports a
heavy runtime.
"""
