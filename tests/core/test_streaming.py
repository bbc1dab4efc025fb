"""Streaming (issue 16 item 16): ``generate --stream`` and ``gpt_simple.stream``.

The engine hands out each token's text as it is decoded (``TokenSequence.stream_piece``):
whole characters only, text that could start a stop string held back, the pieces adding up to
exactly the completion. Through a pseudo-terminal ``generate`` prints that text; through a pipe
its JSONL is unchanged. The toy backend (one character a token) and real tokenizers (byte-level
BPE with multi-byte characters split across tokens, word-level) drive it.
"""

from __future__ import annotations

import json
import os
import pty
import random
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import gpt_simple
from gpt_simple_core.cli import streaming as streaming_module
from gpt_simple_core.engine.scheduler import GroupScheduler
from gpt_simple_core.engine.token_sequence import TokenSequence, held_back
from gpt_simple_core.errors import GenerationError
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import LoadRequest
from gpt_simple_core.records.parse import Record
from gpt_simple_lm_format.tokenizer import HFTokenizer
from tests.core.helpers import (
    TEXTS,
    cli,
    generation_params,
    read_jsonl,
    run_toy_cli,
    subprocess_env,
    toy_cli_command,
)
from tests.core.test_sequence import stop_candidates
from tests.support.checkpoints import write_tokenizer
from tests.support.toy_backend import ToyModel, write_toy_checkpoint

SCRIPT = "hello world, "  # what the toy model writes (see the toy backend's ``script``)


def planned(prompt: str = "p", index: int = 0, **params: object) -> PlannedRecord:
    record = Record(index, index + 1, prompt, {"prompt": prompt})
    return PlannedRecord.from_params(record, generation_params(**params))


def streamed(tokenizer, ids: list[int], **params: object) -> tuple[TokenSequence, list[str]]:
    """Feed ``ids`` as the sampled tokens of a streamed sequence; its pieces, token by token."""
    params.setdefault("max_new_tokens", len(ids))
    seq = TokenSequence(planned(**params), [0], tokenizer, stream=True)
    pieces = []
    for token in ids:
        seq.add(token)
        pieces.append(seq.stream_piece())
        if seq.done:
            break
    return seq, pieces


# Hold-back and UTF-8 safety -------------------------------------------------------------------
def test_held_back_is_the_longest_ending_that_starts_a_stop_string() -> None:
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello w", ("world", "wxyz")) == 1
    assert held_back("hello", ("world",)) == 0
    assert held_back("aaa", ("aab",)) == 2  # "aa" may still become "aab"
    assert held_back("ab", ("b", "abc")) == 2  # the longest candidate wins
    assert held_back("", ("x",)) == 0
    assert held_back("x", ()) == 0


@pytest.mark.parametrize("text", TEXTS)
def test_what_was_shown_is_always_the_start_of_the_completion(tokenizer, text: str) -> None:
    """Whatever the stop strings: every piece extends a prefix of the final completion (so
    nothing of a stop string was ever shown), and the pieces add up to exactly it."""
    ids = tokenizer.encode(text)
    rng = random.Random(text)
    stopped = 0
    for stops in [(), *stop_candidates(tokenizer.decode(ids), rng)]:
        seq, pieces = streamed(tokenizer, ids, stop=stops)
        shown = ""
        for piece in pieces:
            shown += piece
            assert seq.completion is None or seq.completion.startswith(shown), (stops, shown)
        assert seq.done and shown == seq.completion, stops
        assert "\ufffd" not in shown
        stopped += seq.finish_reason == "stop"
    assert stopped >= 10  # most candidates really stop the text


def test_a_character_split_across_tokens_is_shown_whole(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "bpe")
    tokenizer = HFTokenizer(tmp_path / "bpe")
    text = "x日本 café 🙂!"
    ids = tokenizer.encode(text)  # untrained characters: one token per byte
    assert len(ids) > len(text)
    seq, pieces = streamed(tokenizer, ids)
    assert "".join(pieces) == text == seq.completion
    assert "" in pieces  # tokens that end inside a character show nothing yet
    for piece in pieces:
        assert "\ufffd" not in piece
        piece.encode("utf-8")  # whole characters: no lone surrogates either
    for char in "日本é🙂":  # each multi-byte character arrives in one piece
        assert any(char in piece for piece in pieces)


def test_held_back_text_is_shown_once_it_is_not_a_stop_string() -> None:
    from tests.support.toy_backend import ALPHABET, ToyTokenizer

    tokenizer = ToyTokenizer()
    ids = [ALPHABET.index(c) for c in "ab abc"]
    seq, pieces = streamed(tokenizer, ids, stop=("abx",))
    # "a" and "ab" wait (they may become "abx"), the space shows that they did not
    assert pieces == ["", "", "ab ", "", "", "abc"]
    assert seq.finish_reason == "length"
    seq, pieces = streamed(tokenizer, [ALPHABET.index(c) for c in "xabx"], stop=("abx",))
    assert pieces == ["x", "", "", ""] and seq.completion == "x"


def test_return_full_text_streams_the_prompt_first() -> None:
    from tests.support.toy_backend import ALPHABET, ToyTokenizer

    tokenizer = ToyTokenizer()
    seq = TokenSequence(
        planned("hi ", return_full_text=True, max_new_tokens=2), [0], tokenizer, stream=True
    )
    pieces = []
    for char in "yo":
        seq.add(ALPHABET.index(char))
        pieces.append(seq.stream_piece())
    assert pieces == ["hi y", "o"] and "".join(pieces) == seq.text()


# The scheduler's per-token callback ---------------------------------------------------------
def test_the_scheduler_streams_every_row_before_reporting_it_done() -> None:
    records = [
        planned("ab", 0, greedy=True, max_new_tokens=12),
        planned("abc", 1, seed=5, max_new_tokens=20, stop=("wor",)),
        planned("b", 2, seed=6, max_new_tokens=3),
    ]
    shown: dict[int, str] = {}
    events: list[tuple[str, int]] = []

    def on_token(seq: TokenSequence, piece: str) -> None:
        shown[seq.index] = shown.get(seq.index, "") + piece
        events.append(("token", seq.index))

    def run(**kwargs: object) -> dict[int, str]:
        done: dict[int, str] = {}

        def on_done(seq: TokenSequence) -> None:
            done[seq.index] = seq.text()
            events.append(("done", seq.index))

        model = ToyModel({"script": SCRIPT, "script_bonus": 3.0}, LoadRequest())
        GroupScheduler(model, on_done=on_done, on_error=pytest.fail, **kwargs).run(records)
        return done

    plain = run()
    assert events and all(kind == "done" for kind, _ in events)  # no callback, no streaming
    events.clear()
    assert run(on_token=on_token) == plain  # streaming changes nothing in the output
    assert shown == plain
    for index in plain:
        last_token = max(i for i, e in enumerate(events) if e == ("token", index))
        assert events[last_token + 1 :].count(("done", index)) == 1


# Through the command line ------------------------------------------------------------------
@pytest.fixture
def toy_script(tmp_path: Path, toy) -> Path:
    return write_toy_checkpoint(tmp_path / "toy", script=SCRIPT, eos_after=20)


def run_in_pty(
    argv: list[str], cwd: Path, *, interrupt_when: str | None = None, **env: str
) -> tuple[int, str, str]:
    """``gpt-simple ARGV`` (toy backend) with stdout on a pseudo-terminal: (exit status,
    what the terminal got, stderr). ``interrupt_when``: send SIGINT once stdout shows it."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        toy_cli_command(*argv),
        cwd=cwd,
        env=subprocess_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()))
    reader.start()
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the other side closed (Linux reports EIO)
                    break
                if not chunk:
                    break
                out += chunk
                if interrupt_when and interrupt_when.encode() in out:
                    process.send_signal(signal.SIGINT)
                    interrupt_when = None
            elif process.poll() is not None:
                break
        code = process.wait(timeout=60)
    finally:
        os.close(master)
        process.kill()
        reader.join()
    return code, out.decode("utf-8"), b"".join(stderr).decode("utf-8")


def test_one_prompt_on_a_terminal_streams_its_text(tmp_path: Path, toy_script: Path) -> None:
    argv = ["generate", "--checkpoint", str(toy_script), "--prompt", "hi", "--seed", "3"]
    argv += ["--stop", "wor"]
    code, terminal, err = run_in_pty(argv, tmp_path)
    assert code == 0, err
    piped = run_toy_cli(argv, cwd=tmp_path)  # the same run through a pipe: JSONL, unchanged
    assert piped.returncode == 0, piped.stderr
    (record,) = [json.loads(line) for line in piped.stdout.splitlines()]
    assert record["completion"] == "hello "  # cut before the stop string
    assert terminal == record["completion"] + "\r\n"  # the terminal's newline is \r\n
    assert "1/1 record" not in err  # no progress line over the text
    no_stream = run_toy_cli([*argv, "--no-stream"], cwd=tmp_path)
    assert no_stream.stdout == piped.stdout  # byte for byte


def test_no_stream_on_a_terminal_prints_jsonl(tmp_path: Path, toy_script: Path) -> None:
    argv = ["generate", "--checkpoint", str(toy_script), "--prompt", "hi", "--no-stream"]
    code, terminal, err = run_in_pty([*argv, "--seed", "3"], tmp_path)
    assert code == 0, err
    assert json.loads(terminal)["completion"].startswith("hello world")


def test_ctrl_c_stops_a_stream_cleanly(tmp_path: Path, toy) -> None:
    toy_slow = write_toy_checkpoint(tmp_path / "slow", script=SCRIPT)
    argv = ["generate", "--checkpoint", str(toy_slow), "--prompt", "hi", "--greedy"]
    argv += ["--max-new-tokens", "2000"]
    code, terminal, err = run_in_pty(argv, tmp_path, interrupt_when="world", TOY_DELAY="0.01")
    assert code == 130, err
    assert terminal.startswith("hello world") and terminal.endswith("\r\n")
    assert len(terminal) < 1000  # it stopped early
    assert "Traceback" not in err and "stopped (SIGINT)" in err


def test_stream_to_a_pipe_prints_text_and_output_keeps_the_jsonl(
    tmp_path: Path, toy_script: Path
) -> None:
    argv = ["generate", "--checkpoint", str(toy_script), "--prompt", "hi", "--seed", "3"]
    streamed_run = run_toy_cli([*argv, "--stream"], cwd=tmp_path)
    plain = run_toy_cli(argv, cwd=tmp_path)
    (record,) = [json.loads(line) for line in plain.stdout.splitlines()]
    assert streamed_run.stdout == record["completion"] + "\n"
    both = run_toy_cli([*argv, "--stream", "--output", "out.jsonl"], cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert both.stdout == record["completion"] + "\n"
    assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == plain.stdout
    hipgpt = run_toy_cli([*argv, "--stream", "false"], cwd=tmp_path)  # HipGPT's spelling
    assert hipgpt.stdout == plain.stdout


def test_several_prompts_stream_one_line_each_in_input_order(
    capsys: pytest.CaptureFixture[str], toy_script: Path
) -> None:
    argv = ["generate", "--checkpoint", str(toy_script), "--seed", "3"]
    for prompt in ("hi", "ab", "xyz"):
        argv += ["--prompt", prompt]
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    completions = [json.loads(line)["completion"] for line in out.splitlines()]
    code, out, err = cli(capsys, *argv, "--stream")
    assert code == 0, err
    assert out == "".join(c + "\n" for c in completions)


def test_delay_ms_pauses_after_each_piece(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, toy_script: Path
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(streaming_module.time, "sleep", pauses.append)
    argv = ["generate", "--ckpt", str(toy_script), "--prompt", "hi", "--greedy", "--stream"]
    code, out, _ = cli(capsys, *argv, "--num_tokens", "5", "--delay_ms", "40")
    assert code == 0 and out == "hello\n"
    assert pauses == [0.04] * 5


def test_hipgpt_flag_spellings_are_aliases(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toy_script: Path
) -> None:
    ours = ["--checkpoint", str(toy_script), "--max-new-tokens", "7", "--temperature", "0.7"]
    ours += ["--top-k", "5", "--top-p", "0.9", "--stop-token-id", "3", "--seed", "1"]
    hipgpt = ["--ckpt", str(toy_script), "--num_tokens", "7", "--temp", "0.7", "--top_k", "5"]
    hipgpt += ["--top_p", "0.9", "--eos_id", "3", "--seed", "1"]
    results = []
    for flags in (ours, hipgpt):
        code, out, err = cli(capsys, "generate", "--prompt", "hi", *flags)
        assert code == 0, err
        results.append(json.loads(out))
    assert results[0] == results[1]
    generation = results[0]["generation"]
    assert (generation["max_new_tokens"], generation["temperature"], generation["top_k"]) == (
        7,
        0.7,
        5,
    )
    assert (generation["top_p"], generation["stop_token_ids"]) == (0.9, [3])
    code, _, err = cli(capsys, "batch-generate", "--input", "x.jsonl", "--num_tokens", "3")
    assert code == 2 and "unrecognized arguments" in err  # generate's, as HipGPT's generate


def test_a_failing_stream_ends_its_line_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toy
) -> None:
    poisoned = write_toy_checkpoint(tmp_path / "poison", script=SCRIPT, poison="w")
    argv = ["generate", "--checkpoint", str(poisoned), "--prompt", "hi", "--greedy", "--stream"]
    code, out, err = cli(capsys, *argv)
    assert code == 1
    assert out == "hello w\n"  # what it had printed (the next step fails), then the line ends
    assert "record failed" in err and "poisoned row" in err
    out_file = tmp_path / "out.jsonl"
    code, out, _ = cli(capsys, *argv, "--output", str(out_file))
    assert code == 1 and out == "hello w\n"
    (record,) = read_jsonl(out_file)
    assert "poisoned row" in record["error"]["message"]


# The Python API ------------------------------------------------------------------------------
@pytest.fixture
def loaded(toy_script: Path):
    model, tokenizer, _ = gpt_simple.load_for_inference(toy_script)
    return model, tokenizer


def test_stream_yields_what_generate_returns(loaded) -> None:
    model, tokenizer = loaded
    for options in (
        {"do_sample": False, "max_new_tokens": 15},
        {"seed": 4, "max_new_tokens": 30, "stop": ["wor", "lo,"]},
        {"seed": 5, "return_full_text": True},
    ):
        pieces = list(gpt_simple.stream(model, tokenizer, "hi", **options))
        assert "".join(pieces) == gpt_simple.generate(model, tokenizer, "hi", **options)[0]
        assert all(pieces)  # only text: empty pieces are for events=True


def test_stream_events_carry_token_ids_and_the_finish_reason(loaded) -> None:
    from tests.support.toy_backend import ALPHABET, EOS_ID

    model, tokenizer = loaded
    events = list(gpt_simple.stream(model, tokenizer, "hi", do_sample=False, events=True))
    assert all(isinstance(e, gpt_simple.StreamEvent) for e in events)
    assert [e.finish_reason for e in events] == [None] * (len(events) - 1) + ["eos"]
    assert events[-1].token_id == EOS_ID and events[-1].text == ""  # eos_after=20
    assert [ALPHABET[e.token_id] for e in events[:-1]] == [e.text for e in events[:-1]]
    assert "".join(e.text for e in events) == (SCRIPT * 2)[:20]


def test_leaving_a_stream_early_stops_its_decoding(loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = loaded
    monkeypatch.setenv("TOY_DELAY", "0.01")
    stream = gpt_simple.stream(model, tokenizer, "hi", max_new_tokens=5000, ignore_eos=True)
    assert next(stream)
    calls = len(model.calls)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "gpt-simple-stream"]
    time.sleep(0.05)
    assert len(model.calls) <= calls + 1  # at most the step in flight


def test_stream_checks_its_arguments_when_called(loaded) -> None:
    model, tokenizer = loaded
    with pytest.raises(TypeError, match=r"stream\(\) got unexpected keyword argument: top_kk"):
        gpt_simple.stream(model, tokenizer, "hi", top_kk=3)
    with pytest.raises(TypeError, match="batch_size"):
        gpt_simple.stream(model, tokenizer, "hi", batch_size=2)
    with pytest.raises(TypeError, match="one prompt"):
        gpt_simple.stream(model, tokenizer, ["a", "b"])  # type: ignore[call-overload]
    with pytest.raises(gpt_simple.ConfigError, match="max_new_tokens"):
        gpt_simple.stream(model, tokenizer, "hi", max_new_tokens=0)


def test_a_failing_stream_raises_generation_error(tmp_path: Path, toy) -> None:
    path = write_toy_checkpoint(tmp_path / "poison", script=SCRIPT, poison="w")
    model, tokenizer, _ = gpt_simple.load_for_inference(path)
    pieces = []
    with pytest.raises(GenerationError, match="poisoned row"):
        for piece in gpt_simple.stream(model, tokenizer, "hi", do_sample=False):
            pieces.append(piece)
    assert "".join(pieces) == "hello w"  # the step after "w" fails
