"""Settings layers (built-ins < config file < command line < record) and per-record seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_simple_core.errors import ConfigError
from gpt_simple_core.records.seeds import DERIVED_SEED_BITS, derive_seed
from gpt_simple_core.settings import load_config
from tests.core.helpers import run_batch

BUILTINS = {
    "max_new_tokens": 100,
    "temperature": 0.8,
    "top_k": 50,
    "top_p": 0.95,
    "min_p": 0.0,
    "greedy": False,
    "repetition_penalty": 1.0,
    "return_full_text": False,
    "stop": [],
    "stop_token_ids": [],
    "ignore_eos": False,
}


def generation_of(record: dict) -> dict:
    return {k: v for k, v in record["generation"].items() if k != "seed"}


def test_builtin_defaults_are_the_trainer_cli_defaults(tmp_path, toy_ckpt, capsys):
    code, (record,), _ = run_batch(capsys, tmp_path, [{"prompt": "ab"}], "--checkpoint", "toy")
    assert code == 0
    assert generation_of(record) == BUILTINS
    assert isinstance(record["generation"]["seed"], int)


def test_config_file_then_flags_then_record(tmp_path, toy_ckpt, capsys):
    Path("gpt-simple.toml").write_text(
        'batch_size = 2\n[model]\ncheckpoint = "toy"\n'
        "[generation]\ntemperature = 0.5\ntop_k = 7\nmax_new_tokens = 3\nmin_p = 0.1\n"
    )
    records = [
        {"prompt": "ab"},
        {"prompt": "ab", "generation": {"top_k": 3, "temperature": 0.9}},
    ]
    code, (plain, own), _ = run_batch(capsys, tmp_path, records, "--temperature", "0.6")
    assert code == 0
    assert generation_of(plain) == BUILTINS | {
        "temperature": 0.6,  # flag over config
        "top_k": 7,  # config over built-in
        "max_new_tokens": 3,
        "min_p": 0.1,
    }
    assert own["generation"]["top_k"] == 3  # record over config
    assert own["generation"]["temperature"] == 0.9  # record over flag
    assert own["generation"]["min_p"] == 0.1


def test_pyproject_table_is_read_when_there_is_no_gpt_simple_toml(tmp_path, toy_ckpt, capsys):
    Path("pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.gpt-simple.generation]\ntop_k = 11\nmax_new_tokens = 2\n'
    )
    code, (record,), _ = run_batch(capsys, tmp_path, [{"prompt": "a"}], "--checkpoint", "toy")
    assert code == 0 and record["generation"]["top_k"] == 11
    Path("gpt-simple.toml").write_text("[generation]\ntop_k = 12\nmax_new_tokens = 2\n")
    code, (record,), _ = run_batch(capsys, tmp_path, [{"prompt": "a"}], "--checkpoint", "toy")
    assert record["generation"]["top_k"] == 12  # gpt-simple.toml wins over pyproject.toml


def test_explicit_config_replaces_the_one_in_the_working_directory(tmp_path, toy_ckpt, capsys):
    Path("gpt-simple.toml").write_text("[generation]\ntop_k = 12\ntop_p = 0.5\n")
    other = tmp_path / "conf" / "sweep.toml"
    other.parent.mkdir()
    other.write_text("[generation]\ntop_k = 13\nmax_new_tokens = 2\n")
    code, (record,), _ = run_batch(
        capsys, tmp_path, [{"prompt": "a"}], "--checkpoint", "toy", "--config", str(other)
    )
    assert code == 0
    assert record["generation"]["top_k"] == 13
    assert record["generation"]["top_p"] == 0.95  # gpt-simple.toml was not read


def test_explicit_pyproject_config_reads_its_table(tmp_path):
    path = tmp_path / "sub" / "pyproject.toml"
    path.parent.mkdir()
    path.write_text("[tool.gpt-simple]\nthreads = 3\n[tool.gpt-simple.model]\ndtype = 'half'\n")
    settings = load_config(path, tmp_path)
    assert settings.run.threads == 3
    assert settings.model.dtype == "fp16"
    assert settings.source == str(path)


def test_a_foreign_or_broken_pyproject_is_ignored(tmp_path):
    Path("pyproject.toml").write_text("[tool.black]\nline-length = 1\n")
    assert load_config(None, tmp_path).generation.top_k is None
    Path("pyproject.toml").write_text("this is [ not toml")
    assert load_config(None, tmp_path).generation.top_k is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[generation]\ntemperature = 0\n", "gpt-simple.toml: generation.temperature: must be > 0"),
        ("[generation]\ntemprature = 1.0\n", "generation.temprature: unknown key (did you mean"),
        ("batchsize = 2\n", "gpt-simple.toml: batchsize: unknown key (did you mean 'batch_size'?)"),
        ("device = 'tpu:x'\n", "device: malformed device 'tpu:x' (auto, or KIND[:N]"),
        ("threads = 0\n", "threads: must be >= 1, got 0"),
        ("context_overflow = 'wrap'\n", "context_overflow: must be one of extrapolate, truncate"),
        ("[model]\ncheckpoint = 'a'\noutput_dir = 'b'\n", "model.output_dir: give checkpoint"),
        ("[generation]\ngreedy = true\ndo_sample = true\n", "generation.do_sample: contradicts"),
        ("[generation]\ntop_k = '5'\n", "generation.top_k: must be an integer, got the string"),
        ("model = 3\n", "model: must be an object"),
        ("this is = = not toml\n", "gpt-simple.toml: cannot read config"),
    ],
)
def test_config_file_errors_name_the_file(tmp_path, toy_ckpt, capsys, text, expected):
    Path("gpt-simple.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"gpt-simple\.toml"):
        load_config(None, tmp_path)
    code, records, err = run_batch(capsys, tmp_path, [{"prompt": "a"}], "--checkpoint", "toy")
    assert code == 2 and records == []
    assert expected in err
    assert "Traceback" not in err


def test_config_errors_in_pyproject_name_the_table(tmp_path, capsys):
    Path("pyproject.toml").write_text("[tool.gpt-simple.generation]\ntop_p = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, tmp_path)
    assert "pyproject.toml [tool.gpt-simple]: generation.top_p: must be in (0, 1]" in str(
        info.value
    )


def test_missing_explicit_config_is_an_error(tmp_path, toy_ckpt, capsys):
    code, _, err = run_batch(
        capsys, tmp_path, [{"prompt": "a"}], "--checkpoint", "toy", "--config", "nope.toml"
    )
    assert code == 2
    assert "config file nope.toml does not exist" in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--temperature", "0"], "--temperature: must be > 0, got 0"),
        (["--top-p", "1.5"], "--top-p: must be in (0, 1], got 1.5"),
        (["--top-k", "-2"], "--top-k: must be >= 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
        (["--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--device", "gpu:one"], "--device: malformed device 'gpu:one' (auto, or KIND[:N]"),
        (["--stop", ""], "--stop: stop strings must not be empty"),
    ],
)
def test_bad_flags_exit_2_with_the_flag_named(tmp_path, toy_ckpt, capsys, flags, expected):
    code, _, err = run_batch(capsys, tmp_path, [{"prompt": "a"}], "--checkpoint", "toy", *flags)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


def test_config_model_dtype_and_generation_dtype(tmp_path):
    Path("gpt-simple.toml").write_text("[generation]\ndtype = 'bfloat16'\n")
    settings = load_config(None, tmp_path)
    assert settings.model.dtype == "bf16"
    assert settings.generation.dtype is None
    Path("gpt-simple.toml").write_text(
        "[model]\ndtype = 'bf16'\n[generation]\ndtype = 'bfloat16'\n"
    )
    assert load_config(None, tmp_path).model.dtype == "bf16"


def test_config_generation_dtype_conflicting_with_model_dtype_is_an_error(tmp_path):
    """As in a record: the config file holds the same blocks, with the same rules."""
    Path("gpt-simple.toml").write_text("[model]\ndtype = 'fp16'\n[generation]\ndtype = 'bf16'\n")
    with pytest.raises(
        ConfigError, match=r"generation\.dtype: bf16 conflicts with model\.dtype fp16"
    ):
        load_config(None, tmp_path)


# Seeds ---------------------------------------------------------------------------------
def test_derived_seeds_are_deterministic_distinct_and_json_safe():
    seeds = [derive_seed(1234, i) for i in range(1000)]
    assert seeds == [derive_seed(1234, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s < 2**DERIVED_SEED_BITS for s in seeds)
    assert derive_seed(1235, 0) != derive_seed(1234, 0)


SEED_RECORDS = [
    {"prompt": "abc", "generation": {"max_new_tokens": 8}},
    {"prompt": "abc", "generation": {"max_new_tokens": 8}},
    {"prompt": "abc", "generation": {"max_new_tokens": 8, "seed": 99}},
    {"prompt": "abc", "generation": {"max_new_tokens": 8}},
]


def test_run_seed_derives_per_record_seeds(tmp_path, toy_ckpt, capsys):
    flags = ("--checkpoint", "toy", "--seed", "7")
    code, first, _ = run_batch(capsys, tmp_path, SEED_RECORDS, *flags)
    assert code == 0
    seeds = [r["generation"]["seed"] for r in first]
    assert seeds == [derive_seed(7, 0), derive_seed(7, 1), 99, derive_seed(7, 3)]
    completions = [r["completion"] for r in first]
    assert completions[0] != completions[1]  # copies of one prompt differ
    _, again, _ = run_batch(capsys, tmp_path, SEED_RECORDS, *flags)
    assert [r["completion"] for r in again] == completions  # one number reproduces the run


def test_config_run_seed_equals_flag_run_seed(tmp_path, toy_ckpt, capsys):
    _, by_flag, _ = run_batch(capsys, tmp_path, SEED_RECORDS, "--checkpoint", "toy", "--seed", "7")
    Path("gpt-simple.toml").write_text("[generation]\nseed = 7\n")
    _, by_config, _ = run_batch(capsys, tmp_path, SEED_RECORDS, "--checkpoint", "toy")
    assert by_config == by_flag
    _, overridden, _ = run_batch(
        capsys, tmp_path, SEED_RECORDS, "--checkpoint", "toy", "--seed", "8"
    )
    assert overridden[0]["generation"]["seed"] == derive_seed(8, 0)  # flag over config
    assert overridden[2]["generation"]["seed"] == 99  # record over both


def test_without_any_seed_one_is_drawn_and_echoed(tmp_path, toy_ckpt, capsys):
    records = [{"prompt": "abc", "generation": {"max_new_tokens": 4}}] * 3
    _, first, _ = run_batch(capsys, tmp_path, records, "--checkpoint", "toy")
    _, second, _ = run_batch(capsys, tmp_path, records, "--checkpoint", "toy")
    seeds = [r["generation"]["seed"] for r in first + second]
    assert all(isinstance(s, int) for s in seeds)
    assert len(set(seeds)) == 6
    # The echoed seed reproduces the record.
    pinned = [{"prompt": "abc", "generation": {"max_new_tokens": 4, "seed": seeds[0]}}]
    _, (replay,), _ = run_batch(capsys, tmp_path, pinned, "--checkpoint", "toy")
    assert replay["completion"] == first[0]["completion"]
