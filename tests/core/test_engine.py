"""The decode engine end to end with the toy backend: order, errors, seeds, stopping, batching,
merging and the output record.

The toy model's logits are a pseudo-random function of each row's own history, plus a large
bonus on the next character of a ``script`` when one is set (so text can be steered), plus
+1000 on its padding band (which the core must mask). Its tokenizer has one id per character.
"""

from __future__ import annotations

import signal

import pytest

from gpt_simple_core.engine.scheduler import GroupScheduler
from gpt_simple_core.plan.planned import PlannedRecord
from gpt_simple_core.protocol import LoadRequest
from gpt_simple_core.records.parse import Record
from gpt_simple_core.records.seeds import derive_seed
from tests.core.helpers import generation_params, run_batch
from tests.support.toy_backend import ALPHABET, ToyBackend, ToyModel, write_toy_checkpoint


@pytest.fixture
def ckpts(tmp_path, toy):
    """A few toy checkpoints; ``ckpts(name, **knobs)`` makes more."""

    def make(name: str, **knobs) -> str:
        write_toy_checkpoint(tmp_path / name, **knobs)
        return name

    return make


def rec(prompt: str, model: str | None = None, **generation) -> dict:
    out: dict = {"prompt": prompt}
    if model is not None:
        out["model"] = {"checkpoint": model}
    if generation:
        out["generation"] = generation
    return out


def completions(outputs: list[dict]) -> list[str | None]:
    return [o.get("completion") for o in outputs]


def all_calls() -> list[list[int]]:
    return [call for model in ToyBackend.loaded for call in model.calls]


# Order and batching ---------------------------------------------------------------------
def test_output_is_in_input_order_when_rows_finish_out_of_order(tmp_path, capsys, ckpts):
    ckpts("m", script="abcdefghij")
    lengths = [9, 1, 5, 2, 7, 3, 1, 8]
    records = [{"id": i} | rec("x", max_new_tokens=n) for i, n in enumerate(lengths)]
    code, outputs, _ = run_batch(
        capsys, tmp_path, records, "--checkpoint", "m", "--batch-size", "4"
    )
    assert code == 0
    assert [o["id"] for o in outputs] == list(range(8))
    assert completions(outputs) == ["abcdefghij"[:n] for n in lengths]
    assert [o["meta"]["finish_reason"] for o in outputs] == ["length"] * 8
    assert [o["meta"]["completion_tokens"] for o in outputs] == lengths
    assert not (tmp_path / "out.jsonl.spool.jsonl").exists()  # spool removed after the run


def test_batch_size_is_respected_and_finished_rows_are_not_fed_again(tmp_path, capsys, ckpts):
    ckpts("m", script="abc")
    lengths = [1, 5, 3, 2, 4, 1, 6, 2, 3, 1]
    records = [rec("ab", max_new_tokens=n) for n in lengths]
    code, outputs, _ = run_batch(
        capsys, tmp_path, records, "--checkpoint", "m", "--batch-size", "3"
    )
    assert code == 0
    calls = all_calls()
    assert max(len(call) for call in calls) == 3
    # one row-forward per sampled token: a finished row is never computed again
    assert sum(len(call) for call in calls) == sum(lengths)
    assert [o["meta"]["completion_tokens"] for o in outputs] == lengths


def test_exact_forward_calls_of_a_small_batch(tmp_path, capsys, ckpts):
    ckpts("m", script="abc")
    records = [rec("ab", max_new_tokens=1), rec("ab", max_new_tokens=4)]
    run_batch(capsys, tmp_path, records, "--checkpoint", "m", "--batch-size", "2")
    (model,) = ToyBackend.loaded
    # prefill of both rows; row 0 is done after one token; row 1 decodes alone
    assert model.calls == [[0, 1], [1], [1], [1]]
    assert model.closed


def test_a_freed_slot_is_refilled_by_the_next_record(tmp_path, capsys, ckpts):
    ckpts("m", script="abc")
    records = [rec("ab", max_new_tokens=n) for n in (1, 3, 2)]
    run_batch(capsys, tmp_path, records, "--checkpoint", "m", "--batch-size", "2")
    (model,) = ToyBackend.loaded
    # slot 0 finishes at prefill, record 3 takes it while slot 1 keeps decoding
    assert model.calls == [[0, 1], [1], [0], [1, 0]]


# Errors ---------------------------------------------------------------------------------
def test_a_failing_record_does_not_change_its_neighbours(tmp_path, capsys, ckpts):
    ckpts("m", poison="z")
    good = [rec(p, seed=s, max_new_tokens=6) for p, s in (("abc", 1), ("hello", 2), ("ok", 3))]
    poisoned = rec("fizz", seed=4, max_new_tokens=6)
    code, mixed, _ = run_batch(
        capsys,
        tmp_path,
        [good[0], poisoned, good[1], good[2]],
        "--checkpoint",
        "m",
        "--batch-size",
        "4",
    )
    assert code == 1
    assert mixed[1]["error"] == {"type": "RuntimeError", "message": "poisoned row 1"}
    assert "completion" not in mixed[1]
    assert mixed[1]["meta"]["backend"] == "toy"
    code, alone, _ = run_batch(capsys, tmp_path, good, "--checkpoint", "m", "--batch-size", "1")
    assert code == 0
    assert completions([mixed[0], mixed[2], mixed[3]]) == completions(alone)
    assert all(len(c) == 6 for c in completions(alone) if "z" not in c)


def test_a_row_failing_mid_decode_leaves_its_neighbours_state_intact(tmp_path, capsys, ckpts):
    """The failing call is replayed row by row from each row's full history."""
    ckpts("m", script="abcdefgzzz", poison="z")
    records = [
        rec("x", max_new_tokens=20),  # fails when it feeds its 8th token, "z"
        rec("x", max_new_tokens=1),  # frees its slot at once...
        rec("x", max_new_tokens=8),  # ...for this one, one token behind the first
    ]
    code, outputs, _ = run_batch(
        capsys, tmp_path, records, "--checkpoint", "m", "--batch-size", "2"
    )
    assert code == 1
    assert outputs[0]["error"]["message"] == "poisoned row 0"
    assert completions(outputs)[1:] == ["a", "abcdefgz"]
    # the third record was in the failing call: it was replayed, not restarted
    assert [0, 1] in ToyBackend.loaded[0].calls


def test_a_record_failing_mid_generation_gets_an_error(tmp_path, capsys, ckpts):
    ckpts("m", poison="q", script="abq")
    code, (out,), _ = run_batch(
        capsys, tmp_path, [rec("hi", max_new_tokens=5)], "--checkpoint", "m"
    )
    assert code == 1
    assert out["error"]["type"] == "RuntimeError"


def test_a_model_that_fails_to_load_fails_its_records_and_the_run_goes_on(tmp_path, capsys, ckpts):
    ckpts("good", script="ok")
    ckpts("broken", fail_load=True)
    records = [
        rec("a", "broken", max_new_tokens=2),
        rec("b", "good", max_new_tokens=2),
        rec("c", "broken", max_new_tokens=2),
    ]
    code, outputs, err = run_batch(capsys, tmp_path, records)
    assert code == 1
    assert [o.get("error") for o in outputs] == [
        {"type": "RuntimeError", "message": "toy checkpoint refuses to load"},
        None,
        {"type": "RuntimeError", "message": "toy checkpoint refuses to load"},
    ]
    assert outputs[1]["completion"] == "ok"
    meta = outputs[0]["meta"]
    assert meta["checkpoint"] == str(tmp_path / "broken")
    assert (meta["backend"], meta["dtype"], meta["device"]) == ("toy", "fp32", "cpu")
    assert "model failed to load" in err


def test_a_prompt_without_tokens_is_a_record_error(tmp_path, capsys, ckpts):
    ckpts("m", script="ab")
    records = [rec("123", max_new_tokens=2), rec("", max_new_tokens=2), rec("x", max_new_tokens=2)]
    code, outputs, _ = run_batch(capsys, tmp_path, records, "--checkpoint", "m")
    assert code == 1
    expected = {"type": "GenerationError", "message": "prompt produced no tokens"}
    assert [o.get("error") for o in outputs] == [expected, expected, None]
    assert outputs[2]["completion"] == "ab"


def test_exit_status_0_when_every_record_completes(tmp_path, capsys, ckpts):
    ckpts("m")
    handler = signal.getsignal(signal.SIGTERM)
    code, outputs, _ = run_batch(
        capsys, tmp_path, [rec("abc", max_new_tokens=3)] * 3, "--checkpoint", "m"
    )
    assert code == 0 and all("completion" in o for o in outputs)
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's SIGTERM handler is undone


def test_an_empty_input_is_a_successful_empty_run(tmp_path, capsys, ckpts):
    ckpts("m")
    code, outputs, _ = run_batch(capsys, tmp_path, ["", "  "], "--checkpoint", "m")
    assert (code, outputs, ToyBackend.loaded) == (0, [], [])


# Seeds ----------------------------------------------------------------------------------
SEEDED = [
    rec("the try statement", seed=11, max_new_tokens=12),
    rec("an exception", seed=12, max_new_tokens=7, temperature=1.3),
    rec("objects are", seed=13, max_new_tokens=12, top_k=5),
    rec("the try statement", seed=14, max_new_tokens=3),
    rec("for each item", seed=15, max_new_tokens=12, top_p=0.5),
    rec("abc", seed=16, max_new_tokens=9, min_p=0.1, repetition_penalty=1.3),
    rec("zzz", seed=17, max_new_tokens=12),
    rec("the try statement", seed=18, max_new_tokens=12, ignore_eos=True),
    rec("q", seed=19, max_new_tokens=5),
]


def test_a_record_depends_only_on_its_prompt_parameters_and_seed(tmp_path, capsys, ckpts):
    ckpts("m")
    runs = {}
    for batch in ("1", "3", "8"):
        code, outputs, _ = run_batch(
            capsys, tmp_path, SEEDED, "--checkpoint", "m", "--batch-size", batch
        )
        assert code == 0
        runs[batch] = completions(outputs)
    assert runs["1"] == runs["3"] == runs["8"]
    assert len(set(runs["1"])) > 5  # real sampling, not a constant
    # other neighbours, other positions: the same completions
    shuffled = [SEEDED[5], rec("noise", seed=1), SEEDED[0], rec("more", seed=2), SEEDED[7]]
    _, outputs, _ = run_batch(capsys, tmp_path, shuffled, "--checkpoint", "m", "--batch-size", "2")
    assert [outputs[i]["completion"] for i in (0, 2, 4)] == [runs["1"][i] for i in (5, 0, 7)]


def test_run_seed_results_do_not_depend_on_batch_size(tmp_path, capsys, ckpts):
    ckpts("m")
    records = [rec("abc", max_new_tokens=10)] * 6
    results = []
    for batch in ("1", "4"):
        _, outputs, _ = run_batch(
            capsys, tmp_path, records, "--checkpoint", "m", "--seed", "5", "--batch-size", batch
        )
        results.append(completions(outputs))
        assert [o["generation"]["seed"] for o in outputs] == [derive_seed(5, i) for i in range(6)]
    assert results[0] == results[1]
    assert len(set(results[0])) > 1


def test_greedy_is_deterministic_without_a_seed(tmp_path, capsys, ckpts):
    ckpts("m")
    records = [rec("abc", max_new_tokens=8, greedy=True)] * 3
    _, outputs, _ = run_batch(capsys, tmp_path, records, "--checkpoint", "m", "--batch-size", "2")
    assert len(set(completions(outputs))) == 1
    assert len({o["generation"]["seed"] for o in outputs}) == 3  # still echoed


# Stopping -------------------------------------------------------------------------------
def test_eos_is_left_out_and_ignore_eos_keeps_going(tmp_path, capsys, ckpts):
    ckpts("m", script="abc", eos_after=3)
    records = [rec("x", max_new_tokens=10), rec("x", max_new_tokens=6, ignore_eos=True)]
    _, (stopped, kept), _ = run_batch(capsys, tmp_path, records, "--checkpoint", "m")
    assert stopped["completion"] == "abc"
    assert stopped["meta"]["finish_reason"] == "eos"
    assert stopped["meta"]["completion_tokens"] == 3
    assert kept["completion"] == "abc<eos><eos><eos>"
    assert kept["meta"]["finish_reason"] == "length"
    assert kept["meta"]["completion_tokens"] == 6


def test_stop_token_ids_are_left_out(tmp_path, capsys, ckpts):
    ckpts("m", script="abcd")
    c = ALPHABET.index("c")
    _, (out,), _ = run_batch(
        capsys, tmp_path, [rec("x", stop_token_ids=[c, 30])], "--checkpoint", "m"
    )
    assert out["completion"] == "ab"
    assert out["meta"]["finish_reason"] == "stop"
    assert out["meta"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("stop", "completion"),
    [
        ("lo w", "hel"),  # four tokens long
        (["zz", "o w", "ld"], "hell"),  # the earliest match wins
        (["llo", "lo"], "he"),  # both match on one token: cut at the earlier one
        ("he", ""),  # at the very start
        ("hello world!", "hello world"),  # never completes
    ],
)
def test_stop_strings_across_tokens(tmp_path, capsys, ckpts, stop, completion):
    ckpts("m", script="hello world")
    _, (out,), _ = run_batch(
        capsys, tmp_path, [rec("x", stop=stop, max_new_tokens=11)], "--checkpoint", "m"
    )
    assert out["completion"] == completion
    assert out["meta"]["finish_reason"] == ("length" if completion == "hello world" else "stop")


def test_stop_strings_are_matched_on_generated_text_only(tmp_path, capsys, ckpts):
    ckpts("m", script="lo world")
    _, (out,), _ = run_batch(
        capsys, tmp_path, [rec("hel", stop="hello", max_new_tokens=8)], "--checkpoint", "m"
    )
    assert out["completion"] == "lo world"
    assert out["meta"]["finish_reason"] == "length"


def test_repetition_penalty_covers_the_prompt_and_the_generated_tokens(tmp_path, capsys, ckpts):
    ckpts("m", script="a")  # +50 on "a" at every step
    penalised = {"greedy": True, "repetition_penalty": 1000.0}
    records = [
        rec("b", max_new_tokens=1, **penalised),  # "a" not seen yet: it wins
        rec("a", max_new_tokens=1, **penalised),  # "a" is in the prompt: 50/1000 loses
        rec("b", max_new_tokens=2, **penalised),  # "a" generated once, then penalised
        rec("a", max_new_tokens=3, greedy=True),  # no penalty: "a" throughout
    ]
    _, outputs, _ = run_batch(capsys, tmp_path, records, "--checkpoint", "m")
    first, second, third, plain = completions(outputs)
    assert first == "a"
    assert not second.startswith("a")
    assert third.startswith("a") and not third[1:].startswith("a")
    assert plain == "aaa"


def test_return_full_text(tmp_path, capsys, ckpts):
    ckpts("m", script="xyz")
    records = [
        rec("The Prompt: ", max_new_tokens=3, return_full_text=True),
        rec("The Prompt: ", max_new_tokens=3),
    ]
    _, (full, plain), _ = run_batch(capsys, tmp_path, records, "--checkpoint", "m")
    assert full["completion"] == "The Prompt: xyz"
    assert plain["completion"] == "xyz"
    assert full["meta"]["prompt_tokens"] == len("the prompt ")  # ':' is not in the alphabet


def test_padding_band_and_pad_are_never_sampled(tmp_path, capsys, ckpts):
    ckpts("m")  # the band carries +1000: unmasked, it would win every draw
    flat = {"temperature": 5.0, "top_k": 0, "top_p": 1.0, "ignore_eos": True}
    records = [rec("abc", seed=s, max_new_tokens=40, **flat) for s in range(6)]
    records.append(rec("abc", max_new_tokens=20, greedy=True))
    code, outputs, _ = run_batch(capsys, tmp_path, records, "--checkpoint", "m")
    assert code == 0
    for out in outputs:
        text = out["completion"].replace("<eos>", "#")
        # band ids decode to "" and the pad to "<pad>": one character per token otherwise
        assert "<pad>" not in text
        assert len(text) == out["meta"]["completion_tokens"]
    assert any("#" in o["completion"].replace("<eos>", "#") for o in outputs)  # flat indeed


# Merging and loading ------------------------------------------------------------------------
def test_groups_that_resolve_alike_load_once(tmp_path, capsys, ckpts):
    ckpts("a", script="aa")
    ckpts("b", script="bb")
    records = [
        rec("x", "a", max_new_tokens=2),  # auto -> fp32 on cpu
        rec("x", "b", max_new_tokens=2),
        {"prompt": "x", "model": {"checkpoint": str(tmp_path / "a"), "dtype": "float32"}},
        {"prompt": "x", "model": {"checkpoint": "./a", "dtype": "fp32", "backend": "toy"}},
    ]
    for r in records[2:]:
        r["generation"] = {"max_new_tokens": 2}
    code, outputs, err = run_batch(capsys, tmp_path, records)
    assert code == 0
    assert [m.settings.get("script") for m in ToyBackend.loaded] == ["aa", "bb"]
    assert completions(outputs) == ["aa", "bb", "aa", "aa"]
    assert {o["meta"]["dtype"] for o in outputs} == {"fp32"}
    assert "merged groups that resolve alike" in err


def test_one_model_in_memory_at_a_time(tmp_path, capsys, ckpts, monkeypatch):
    for name in "abc":
        ckpts(name, script=name)
    original = ToyBackend.load

    def load(self, checkpoint, request):
        assert all(model.closed for model in ToyBackend.loaded), "previous model still open"
        return original(self, checkpoint, request)

    monkeypatch.setattr(ToyBackend, "load", load)
    records = [rec("x", name, max_new_tokens=1) for name in "abcabc"]
    code, outputs, _ = run_batch(capsys, tmp_path, records)
    assert code == 0
    assert completions(outputs) == list("abcabc")
    assert len(ToyBackend.loaded) == 3
    assert all(model.closed for model in ToyBackend.loaded)


# The output record --------------------------------------------------------------------------
def test_output_record_shape(tmp_path, capsys, ckpts):
    ckpts("m", script="ok", context=6)
    records = [
        {"id": 1, "prompt": "abcd", "generation": {"max_new_tokens": 2, "seed": 3}, "tag": "t"},
        {"z": None, "prompt": "abcd", "nested": {"k": [1, 2]}},
        {"prompt": "1", "id": 3},
    ]
    code, (first, second, failed), _ = run_batch(
        capsys, tmp_path, records, "--checkpoint", "m", "--max-new-tokens", "3"
    )
    assert code == 1
    assert list(first) == ["id", "prompt", "generation", "tag", "completion", "meta"]
    assert list(second) == ["z", "prompt", "nested", "completion", "generation", "meta"]
    assert list(failed) == ["prompt", "id", "error", "generation", "meta"]
    assert second["nested"] == {"k": [1, 2]} and second["z"] is None
    assert first["generation"] == {
        "max_new_tokens": 2,
        "temperature": 0.8,
        "top_k": 50,
        "top_p": 0.95,
        "min_p": 0.0,
        "greedy": False,
        "repetition_penalty": 1.0,
        "seed": 3,
        "return_full_text": False,
        "stop": [],
        "stop_token_ids": [],
        "ignore_eos": False,
    }
    assert second["generation"]["max_new_tokens"] == 3
    meta = first["meta"]
    assert meta == {
        "checkpoint": str(tmp_path / "m"),
        "format": "toy",
        "step": None,
        "backend": "toy",
        "backend_reason": "auto: highest-priority installed backend for toy checkpoints",
        "dtype": "fp32",
        "device": "cpu",
        "notes": {"toy": True},
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "finish_reason": "length",
    }
    # 4 prompt + 3 new tokens ran past the toy's context of 6: the backend's policy is noted
    assert second["meta"]["notes"]["context"] == (
        "7 tokens ran past the context of 6; policy: extrapolate"
    )
    assert set(failed["meta"]) >= {"checkpoint", "backend", "dtype", "device"}


def test_scheduler_chunks_long_prompts_under_the_token_budget():
    """A prompt longer than max_batch_tokens is prefilled in chunks."""
    model = ToyModel({"script": "abcd"}, LoadRequest())
    done = []
    planned = [
        PlannedRecord.from_params(
            Record(i, i + 1, p, {"prompt": p}), generation_params(max_new_tokens=2, seed=i)
        )
        for i, p in enumerate(["abcdefghij", "xy"])
    ]
    GroupScheduler(
        model,
        on_done=done.append,
        on_error=lambda r, e: pytest.fail(str(e)),
        batch_size=2,
        max_batch_tokens=4,
    ).run(planned)
    assert [seq.text() for seq in done] == ["ab", "ab"]
    assert model.calls[:3] == [[0], [0], [0]]  # 10 tokens: chunks of 4, 4, 2
    assert model.calls[3] == [1]  # the short prompt fits in the budget on its own
