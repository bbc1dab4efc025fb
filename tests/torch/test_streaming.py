"""Streaming with the embedded default model (issue 16 item 16): its byte-level BPE splits
multi-byte characters across tokens, the stream shows them whole; ``gpt_simple.stream`` and
``generate --stream`` on a terminal give exactly the completion a JSONL run gives."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gpt_simple
from gpt_simple_core.engine.token_sequence import TokenSequence
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.schema import (
    BUILTIN_GENERATION,
    GenerationSpec,
    resolve_generation,
    stack,
)
from tests.support.cli import subprocess_env

pytestmark = pytest.mark.torch

PROMPT = "The assert statement"
SPLIT = "naïve café — 日本語のテキスト 🙂🙃!"  # characters the tokenizer has no merge for


@pytest.fixture(scope="module")
def builtin():
    model, tokenizer, _ = gpt_simple.load_for_inference("builtin:default", device="cpu")
    return model, tokenizer


def test_the_builtin_tokenizer_streams_split_characters_whole(builtin) -> None:
    _, tokenizer = builtin
    ids = tokenizer.encode(SPLIT)
    split = [i for i in range(1, len(ids)) if "\ufffd" in tokenizer.decode(ids[:i])]
    assert split, "the text should split some character across tokens"
    record = Record(0, 1, PROMPT, {"prompt": PROMPT})
    spec = GenerationSpec(max_new_tokens=len(ids), stop=("🙃",))
    params = resolve_generation(stack(BUILTIN_GENERATION, spec), 0)
    seq = TokenSequence(PlannedRecord.from_params(record, params), [0], tokenizer, stream=True)
    shown = ""
    for token in ids:
        seq.add(token)
        piece = seq.stream_piece()
        assert "\ufffd" not in piece
        shown += piece
        assert SPLIT.startswith(shown)
        if seq.done:
            break
    assert shown == seq.completion == SPLIT[: SPLIT.index("🙃")]


def test_stream_gives_the_generate_completion(builtin) -> None:
    model, tokenizer = builtin
    options = {"max_new_tokens": 24, "do_sample": False, "stop": [" the "]}
    pieces = list(gpt_simple.stream(model, tokenizer, PROMPT, **options))
    assert len(pieces) > 3  # it came in pieces
    assert "".join(pieces) == gpt_simple.generate(model, tokenizer, PROMPT, **options)[0]
    events = list(gpt_simple.stream(model, tokenizer, PROMPT, events=True, **options))
    assert events[-1].finish_reason in ("stop", "length", "eos")
    assert "".join(e.text for e in events) == "".join(pieces)


def test_generate_on_a_terminal_streams_the_jsonl_completion(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "gpt_simple_core.cli.main", "generate", "--prompt", PROMPT]
    argv += ["--max-new-tokens", "16", "--greedy", "--threads", "1"]
    env = subprocess_env(GPT_SIMPLE_PLUGINS="torch")
    piped = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert piped.returncode == 0, piped.stderr
    (record,) = [json.loads(line) for line in piped.stdout.splitlines()]
    master, slave = pty.openpty()
    process = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    assert process.wait(timeout=60) == 0, process.stderr.read()
    process.stderr.close()
    assert out.decode("utf-8") == record["completion"].replace("\n", "\r\n") + "\r\n"
