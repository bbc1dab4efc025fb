"""The format plugin of gpt-simple trainer checkpoints: claims what :mod:`.layout` resolves.

It registers no backend: the ``torch`` plugin runs this format (and ``onnx`` when asked).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpt_simple.plugins import CheckpointInfo, Format, hookimpl, install_command
from gpt_simple_lm_format.layout import FORMAT, inspect, is_checkpoint_dir, is_run_dir

GPT_SIMPLE_PLUGIN_API = 1


@hookimpl
def gpt_simple_register_formats(register: Callable[[Format], None]) -> None:
    register(
        Format(
            FORMAT,
            "gpt-simple trainer checkpoints (model/config.json) and run directories (checkpoints/)",
            install_hint=install_command("gpt-simple-inference", "torch"),
        )
    )


@hookimpl
def gpt_simple_inspect_checkpoint(
    path: Path, tokenizer: Path | None, load_tokenizer: bool
) -> CheckpointInfo | None:
    if not path.is_dir() or not (is_checkpoint_dir(path) or is_run_dir(path)):
        return None
    return inspect(path, tokenizer, load_tokenizer)
