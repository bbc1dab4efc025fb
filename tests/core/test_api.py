"""The Python API (``gpt_simple``): shapes of the trainer's API, seeds, errors."""

from __future__ import annotations

import json

import pytest

import gpt_simple
from gpt_simple import (
    BackendError,
    ConfigError,
    GenerationError,
    generate,
    generate_records,
    load_for_inference,
)
from gpt_simple_core.records.seeds import derive_seed
from tests.core.helpers import run_batch
from tests.support.toy_backend import EOS_ID, PAD_ID, TOKENIZER_SIZE, ToyModel, write_toy_checkpoint


@pytest.fixture
def loaded(toy_ckpt):
    return load_for_inference(toy_ckpt)


def test_load_for_inference_returns_model_tokenizer_config(tmp_path, toy):
    path = write_toy_checkpoint(tmp_path / "t", script="ab", context=64)
    result = load_for_inference(str(path), dtype="float32", device="cpu")
    assert isinstance(result, tuple) and len(result) == 3
    model, tokenizer, config = result
    assert isinstance(model, ToyModel) and model.dtype == "fp32"
    assert config == {"script": "ab", "context": 64}
    assert tokenizer.encode("ab") == [0, 1]
    assert tokenizer.decode([0, 1]) == "ab"
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (EOS_ID, PAD_ID)
    assert len(tokenizer) == TOKENIZER_SIZE
    model, _, _ = load_for_inference(path, dtype="half", backend="toy")
    assert model.dtype == "fp16"


def test_load_for_inference_errors(toy_ckpt):
    with pytest.raises(BackendError, match="cannot run dtype bf16"):
        load_for_inference(toy_ckpt, dtype="bfloat16")
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        load_for_inference(toy_ckpt, backend="nope")
    with pytest.raises(gpt_simple.CheckpointError, match="no such file or directory"):
        load_for_inference(toy_ckpt.parent / "missing")


def test_generate_accepts_a_string_or_any_iterable(loaded):
    model, tokenizer, _ = loaded
    one = generate(model, tokenizer, "abc", max_new_tokens=5, seed=1, ignore_eos=True)
    assert isinstance(one, list) and len(one) == 1 and isinstance(one[0], str)
    many = generate(model, tokenizer, (p for p in ["abc", "de", "f"]), max_new_tokens=5, seed=1)
    assert len(many) == 3 and all(isinstance(text, str) for text in many)
    assert many[0] == one[0]  # same prompt, same position, same run seed
    assert generate(model, tokenizer, [], seed=1) == []


def test_seed_is_a_run_seed(loaded):
    model, tokenizer, _ = loaded
    prompts = ["the try statement"] * 4
    first = generate(model, tokenizer, prompts, max_new_tokens=12, seed=3, ignore_eos=True)
    assert len(set(first)) == 4  # repeated prompts differ
    again = generate(model, tokenizer, prompts, max_new_tokens=12, seed=3, ignore_eos=True)
    assert again == first  # a rerun is identical
    batched = generate(
        model, tokenizer, prompts, max_new_tokens=12, seed=3, ignore_eos=True, batch_size=1
    )
    assert batched == first
    records = generate_records(model, tokenizer, prompts, max_new_tokens=12, seed=3)
    assert [r["generation"]["seed"] for r in records] == [derive_seed(3, i) for i in range(4)]
    unseeded = generate_records(model, tokenizer, prompts, max_new_tokens=2)
    assert len({r["generation"]["seed"] for r in unseeded}) == 4


def test_greedy_repeats_exactly(loaded):
    model, tokenizer, _ = loaded
    texts = generate(model, tokenizer, ["abc"] * 3, max_new_tokens=8, do_sample=False)
    assert len(set(texts)) == 1


def test_generate_records_shape_and_trainer_api_defaults(loaded):
    model, tokenizer, _ = loaded
    (record,) = generate_records(model, tokenizer, "abc", max_new_tokens=3, seed=0)
    assert list(record) == ["prompt", "completion", "generation", "meta"]
    assert record["prompt"] == "abc"
    generation = record["generation"]
    assert (generation["temperature"], generation["top_k"], generation["top_p"]) == (1.0, 0, 1.0)
    assert generation["greedy"] is False and generation["max_new_tokens"] == 3
    meta = record["meta"]
    assert (meta["dtype"], meta["device"], meta["notes"]) == ("fp32", "cpu", {"toy": True})
    assert meta["prompt_tokens"] == 3
    assert meta["finish_reason"] in ("length", "eos")


def test_options_pass_through(tmp_path, toy):
    path = write_toy_checkpoint(tmp_path / "s", script="hello world")
    model, tokenizer, _ = load_for_inference(path)
    assert generate(model, tokenizer, "x", max_new_tokens=11, stop="o w") == ["hell"]
    assert generate(model, tokenizer, "x", max_new_tokens=11, stop=["wor", "ll"]) == ["he"]
    assert generate(model, tokenizer, "x", max_new_tokens=11, stop_token_ids=[14]) == [
        "hell"
    ]  # 14: "o"
    assert generate(model, tokenizer, "Say: ", max_new_tokens=5, return_full_text=True) == [
        "Say: hello"
    ]


def test_same_engine_as_the_cli(tmp_path, capsys, toy):
    path = write_toy_checkpoint(tmp_path / "m")
    prompts = ["the try statement", "an exception", "the try statement"]
    _, outputs, _ = run_batch(
        capsys,
        tmp_path,
        [{"prompt": p} for p in prompts],
        "--checkpoint",
        "m",
        "--seed",
        "9",
        "--max-new-tokens",
        "10",
    )
    model, tokenizer, _ = load_for_inference(path)
    texts = generate(
        model, tokenizer, prompts, seed=9, max_new_tokens=10, temperature=0.8, top_k=50, top_p=0.95
    )
    assert texts == [o["completion"] for o in outputs]


def test_failures_raise_generation_error(tmp_path, toy, loaded):
    model, tokenizer, _ = loaded
    with pytest.raises(GenerationError, match=r"1 prompt failed: prompt 1: GenerationError: "):
        generate(model, tokenizer, ["abc", "123", "de"], max_new_tokens=2)
    records = generate_records(model, tokenizer, ["abc", "123"], max_new_tokens=2)
    assert "completion" in records[0]
    assert records[1]["error"] == {
        "type": "GenerationError",
        "message": "prompt produced no tokens",
    }
    poisoned, tok, _ = load_for_inference(write_toy_checkpoint(tmp_path / "p", poison="z"))
    with pytest.raises(GenerationError, match="RuntimeError: poisoned row"):
        generate(poisoned, tok, ["ok", "zap"], max_new_tokens=2)
    assert issubclass(GenerationError, gpt_simple.GptSimpleError)


def test_bad_arguments(loaded):
    model, tokenizer, _ = loaded
    # input mistakes are GptSimpleErrors (ConfigError), each argument named
    with pytest.raises(ConfigError, match="temperature: must be > 0"):
        generate(model, tokenizer, "abc", temperature=0)
    with pytest.raises(ConfigError, match="top_p: must be in"):
        generate(model, tokenizer, "abc", top_p=2.0)
    with pytest.raises(ConfigError, match="max_new_tokens: must be >= 1"):
        generate(model, tokenizer, "abc", max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"seed: must be in \[0, 2\*\*64\)"):
        generate(model, tokenizer, "abc", seed=-1)
    with pytest.raises(TypeError, match=r"generate\(\) got unexpected keyword.*top_kk \(did you"):
        generate(model, tokenizer, "abc", top_kk=3)
    with pytest.raises(TypeError, match="prompt 1 is int"):
        generate(model, tokenizer, ["abc", 5])
    with pytest.raises(TypeError, match="is not a model gpt-simple can run"):
        generate(object(), tokenizer, "abc")


def test_facade_exports():
    assert set(gpt_simple.__all__) >= {
        "generate",
        "generate_records",
        "load_for_inference",
        "validate_checkpoint",
        "GenerationError",
        "ValidatedCheckpoint",
    }
    assert gpt_simple.__version__


def test_batch_generate_writes_a_file_and_resumes(tmp_path, toy):
    write_toy_checkpoint(tmp_path / "m", script="xy")
    records = [{"id": i, "prompt": "ab", "generation": {"max_new_tokens": 2}} for i in range(6)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    defaults = {"model": {"checkpoint": str(tmp_path / "m")}, "generation": {"seed": 9}}
    result = gpt_simple.batch_generate(source, out, **defaults)
    assert (result.written, result.failed, result.stopped) == (6, 0, None)
    complete = out.read_bytes()
    with pytest.raises(ConfigError, match="complete output of an earlier run"):
        gpt_simple.batch_generate(source, out, **defaults)
    out.write_bytes(complete[: len(complete) // 2])
    resumed = gpt_simple.batch_generate(source, out, resume=True, **defaults)
    assert 0 < resumed.written < 6
    assert out.read_bytes() == complete
    with pytest.raises(ConfigError, match="is the input file"):
        gpt_simple.batch_generate(source, source, overwrite=True, **defaults)
