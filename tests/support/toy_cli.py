"""The ``gpt-simple`` command line with the toy backend registered, for subprocess tests.

    python -m tests.support.toy_cli batch-generate --input in.jsonl ...

Run it with ``GPT_SIMPLE_PLUGINS=""`` so no installed entry-point plugin loads (the gpt-simple-lm
format plugin is registered as an object). With
``TOY_CLI_REPORT_MODULES=1`` it prints, after the command, one stderr line
``heavy-modules: [...]``: the torch and onnxruntime modules the run imported.
"""

from __future__ import annotations

import json
import os
import sys

from gpt_simple_core.cli.main import main
from gpt_simple_lm_format import plugin as lm_format_plugin
from tests.support.plugins import add_plugin, current
from tests.support.toy_backend import register_toy_plugin

HEAVY = ("torch", "onnxruntime")


def run(argv: list[str]) -> int:
    add_plugin(lm_format_plugin)  # gpt-simple checkpoints, as when installed
    register_toy_plugin()
    code = main(argv, registry=current())
    if os.environ.get("TOY_CLI_REPORT_MODULES"):
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        print(f"heavy-modules: {json.dumps(heavy)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
