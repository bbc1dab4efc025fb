"""The native backend: HipGPT ``gpt_checkpoint.bin`` checkpoints run with numpy (never torch).

Read in data order:

* :mod:`~gpt_simple_native.format`: the binary layout, header validation, reading the weights;
* :mod:`~gpt_simple_native.tokenizer`: HipGPT's word-level BPE ``tokenizer.json`` (v1 and v2);
* :mod:`~gpt_simple_native.model`: the forward pass, with HipGPT's quirks, in one file;
* :mod:`~gpt_simple_native.layout`: which file a user's path designates (file, folder, run);
* :mod:`~gpt_simple_native.plugin`: the hooks, the ``native`` backend and its loaded model.

The format is specified in ``shared/specs/native-format.md``; ``docs/hipgpt.md`` is the user
guide.
"""
