"""Checkpoint resolution (the trainer's ``resume: auto`` rule), tokenizer discovery, config and
weight checks, ``validate_checkpoint`` and ``gpt-simple validate``. No torch: run directories
are built with numpy and safetensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpt_simple import ValidatedCheckpoint, validate_checkpoint
from gpt_simple_core.checkpoints.resolve import expand_path
from gpt_simple_core.errors import CheckpointError, TokenizerError
from gpt_simple_lm_format.config import ModelConfig
from gpt_simple_lm_format.layout import select_checkpoint
from tests.core.helpers import cli
from tests.support.checkpoints import (
    random_state_dict,
    small_config,
    write_checkpoint,
    write_run_dir,
    write_tokenizer,
)
from tests.support.plugins import resolve_checkpoint


def add_checkpoint(run: Path, name: str, step: int | None = None, **kwargs) -> Path:
    """Another checkpoint in an existing run directory (same config as the others)."""
    config = ModelConfig(**json.loads((run / "config.json").read_text())["model"])
    return write_checkpoint(
        run / "checkpoints" / name, config, step=step, tokenizer=False, **kwargs
    )


def state(step, **more) -> str:
    return json.dumps({"schema_version": 1, "step": step, **more})


# Choosing a checkpoint in a run directory -----------------------------------------------
def test_final_is_preferred_whatever_its_step(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-100": 100, "checkpoint-500": 500})
    add_checkpoint(run, "final", 10)
    info = resolve_checkpoint(str(run))
    assert info.path == run / "checkpoints" / "final"
    assert info.step == 10
    assert "'final'" in info.selected_because


def test_partial_and_stateless_folders_are_skipped(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-100": 100, "checkpoint-200": None})
    add_checkpoint(run, "checkpoint-900.partial", 900)
    add_checkpoint(run, "final.partial", 1000)
    (run / "checkpoints" / "stray-file.txt").write_text("not a folder")
    info = resolve_checkpoint(str(run))
    assert info.path.name == "checkpoint-100"
    assert info.step == 100
    why = info.selected_because
    assert "step 100" in why
    assert "checkpoint-900.partial (save in progress)" in why
    assert "final.partial (save in progress)" in why
    assert "checkpoint-200 (no valid trainer_state.json)" in why


def test_the_step_inside_trainer_state_wins_over_the_folder_name(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-900": 5, "checkpoint-100": 100})
    assert resolve_checkpoint(str(run)).path.name == "checkpoint-100"


def test_equal_steps_are_broken_by_sorted_name_and_the_plan_says_so(tmp_path):
    run = write_run_dir(
        tmp_path / "run",
        {"checkpoint-1000-shutdown": 1000, "checkpoint-1000": 1000, "checkpoint-10": 10},
    )
    path, step, why = select_checkpoint(run)
    assert path.name == "checkpoint-1000-shutdown"  # sorts after "checkpoint-1000"
    assert step == 1000
    assert "tie on step with checkpoint-1000 broken by name" in why


def test_bare_infinity_in_trainer_state_is_accepted(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-1": 1})
    add_checkpoint(
        run,
        "checkpoint-7",
        trainer_state='{"schema_version": 1, "step": 7, "best_loss": Infinity, "x": -Infinity}',
    )
    info = resolve_checkpoint(str(run))
    assert info.path.name == "checkpoint-7" and info.step == 7


@pytest.mark.parametrize(
    "bad_state",
    [
        state(50, schema_version=2),
        '{"step": 50}',
        state("50"),
        state(True),
        state(None),
        "[1]",
        "{not json",
        "",
    ],
)
def test_unusable_trainer_states_are_skipped(tmp_path, bad_state):
    run = write_run_dir(tmp_path / "run", {"checkpoint-1": 1})
    add_checkpoint(run, "checkpoint-50", trainer_state=bad_state)
    info = resolve_checkpoint(str(run))
    assert info.path.name == "checkpoint-1"
    assert "checkpoint-50 (no valid trainer_state.json)" in info.selected_because


def test_no_completed_checkpoint(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-1": None})
    add_checkpoint(run, "checkpoint-2.partial", 2)
    with pytest.raises(CheckpointError, match="run directory has no completed checkpoint") as e:
        resolve_checkpoint(str(run))
    assert "checkpoint-2.partial (save in progress)" in str(e.value)
    assert "checkpoint-1 (no valid trainer_state.json)" in str(e.value)
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="run directory has no completed checkpoint"):
        resolve_checkpoint(str(empty))


def test_a_checkpoint_directory_is_taken_as_is(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-1": 1, "checkpoint-2": 2})
    info = resolve_checkpoint(str(run / "checkpoints" / "checkpoint-1"))
    assert info.path == run / "checkpoints" / "checkpoint-1"
    assert info.step == 1
    assert info.selected_because is None
    bare = write_checkpoint(tmp_path / "bare", step=None)  # trainer_state.json not required
    info = resolve_checkpoint(str(bare))
    assert info.step is None
    assert info.tokenizer == bare / "tokenizer"


def test_neither_kind_of_folder(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint any installed format plugin"):
        resolve_checkpoint(str(tmp_path / "plain"))
    with pytest.raises(CheckpointError, match="no such file or directory"):
        resolve_checkpoint(str(tmp_path / "missing"))


# Paths: ~, variables, relative, symlinks --------------------------------------------------
def test_home_and_variables_are_expanded(tmp_path, monkeypatch):
    run = write_run_dir(tmp_path / "home" / "runs" / "r1", {"checkpoint-3": 3})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", str(tmp_path / "home" / "runs"))
    monkeypatch.setenv("NAME", "r1")
    expected = run / "checkpoints" / "checkpoint-3"
    for raw in ("~/runs/r1", "$RUNS/r1", "${RUNS}/$NAME", "~/runs/${NAME}"):
        assert resolve_checkpoint(raw).path == expected, raw


def test_an_unset_variable_is_an_error_not_an_empty_string(monkeypatch):
    monkeypatch.delenv("GPT_SIMPLE_NOT_SET", raising=False)
    with pytest.raises(CheckpointError, match="environment variable GPT_SIMPLE_NOT_SET is not set"):
        expand_path("/data/${GPT_SIMPLE_NOT_SET}/run")
    with pytest.raises(CheckpointError, match="GPT_SIMPLE_NOT_SET is not set"):
        expand_path("$GPT_SIMPLE_NOT_SET")


def test_relative_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    write_run_dir(tmp_path / "work" / "run", {"checkpoint-3": 3})
    monkeypatch.chdir(tmp_path / "work")
    info = resolve_checkpoint("run")
    assert info.path == (tmp_path / "work" / "run" / "checkpoints" / "checkpoint-3").resolve()
    assert resolve_checkpoint("./run/../run", cwd=tmp_path / "work").path == info.path
    assert resolve_checkpoint("work/run", cwd=tmp_path).path == info.path


def test_symlinks_resolve_to_one_canonical_path(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-3": 3})
    os.symlink(run, tmp_path / "alias")
    assert resolve_checkpoint(str(tmp_path / "alias")).path == resolve_checkpoint(str(run)).path


# Tokenizer discovery ------------------------------------------------------------------
def test_tokenizer_beside_the_checkpoint_wins_over_the_run_root(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-3": 3})
    ckpt = run / "checkpoints" / "checkpoint-3"
    assert resolve_checkpoint(str(run)).tokenizer == run / "tokenizer"
    write_tokenizer(ckpt / "tokenizer")
    assert resolve_checkpoint(str(run)).tokenizer == ckpt / "tokenizer"


def test_tokenizer_override_folder_or_file(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-3": 3})
    write_tokenizer(tmp_path / "other")
    assert resolve_checkpoint(str(run), tokenizer="other").tokenizer == tmp_path / "other"
    by_file = resolve_checkpoint(str(run), tokenizer=str(tmp_path / "other" / "tokenizer.json"))
    assert by_file.tokenizer == tmp_path / "other"
    with pytest.raises(CheckpointError, match="tokenizer nowhere: no such file or directory"):
        resolve_checkpoint(str(run), tokenizer="nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match=f"no tokenizer.json in {tmp_path / 'empty'}"):
        resolve_checkpoint(str(run), tokenizer="empty")


def test_missing_tokenizer_names_every_path_tried_and_never_falls_back(tmp_path):
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints" / "c", tokenizer=False)
    with pytest.raises(TokenizerError) as info:
        resolve_checkpoint(str(ckpt))
    message = str(info.value)
    assert str(ckpt / "tokenizer") in message
    assert str(tmp_path / "run" / "tokenizer") in message
    assert "no fallback to a hub tokenizer" in message


def test_sentencepiece_only_folder_is_refused_with_a_reason(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c", tokenizer=False)
    (ckpt / "tokenizer").mkdir()
    (ckpt / "tokenizer" / "spm.model").write_bytes(b"\x00sentencepiece")
    with pytest.raises(TokenizerError, match="holds only a SentencePiece model"):
        resolve_checkpoint(str(ckpt))


def test_broken_tokenizer_json_is_reported(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    (ckpt / "tokenizer" / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        resolve_checkpoint(str(ckpt))
    # ...but only when asked to load it
    assert resolve_checkpoint(str(ckpt), load_tokenizer=False).eos_id is None


def test_a_tokenizer_larger_than_the_vocab_does_not_belong(tmp_path):
    size = write_tokenizer(tmp_path / "tok")
    ckpt = write_checkpoint(tmp_path / "c", small_config(size, vocab_size=256), tokenizer=False)
    with pytest.raises(CheckpointError, match="does not belong to checkpoint"):
        resolve_checkpoint(str(ckpt), tokenizer=str(tmp_path / "tok"))


def test_vocab_not_rounded_from_the_tokenizer_is_a_warning(tmp_path):
    size = write_tokenizer(tmp_path / "tok")
    ckpt = write_checkpoint(tmp_path / "c", small_config(size, vocab_size=640), tokenizer=False)
    info = resolve_checkpoint(str(ckpt), tokenizer=str(tmp_path / "tok"))
    assert any("is not the tokenizer size" in w for w in info.warnings)


# Model config and weights ---------------------------------------------------------------
def edit_config(ckpt: Path, **changes) -> None:
    path = ckpt / "model" / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unknown_config_keys_are_reported(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    edit_config(ckpt, sliding_window=128, use_moe=True)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(str(ckpt))
    assert "unknown key(s) sliding_window, use_moe" in str(info.value)
    assert str(ckpt / "model" / "config.json") in str(info.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"n_layer": "2"}, "n_layer has the wrong type"),
        ({"tie_word_embeddings": 1}, "tie_word_embeddings has the wrong type"),
        ({"activation": "tanh"}, "activation must be one of"),
        ({"n_head": 3}, "not divisible by n_head"),
        ({"vocab_size": 0}, "vocab_size must be positive"),
    ],
)
def test_bad_config_values_are_reported(tmp_path, changes, expected):
    ckpt = write_checkpoint(tmp_path / "c")
    edit_config(ckpt, **changes)
    with pytest.raises(CheckpointError, match=expected):
        resolve_checkpoint(str(ckpt), load_tokenizer=False)


def test_unreadable_config(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    (ckpt / "model" / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        resolve_checkpoint(str(ckpt))
    (ckpt / "model" / "config.json").write_text('{"n_embd": 64}')
    with pytest.raises(CheckpointError, match="vocab_size is missing"):
        resolve_checkpoint(str(ckpt))


def test_safetensors_shapes_must_match_the_config(tmp_path):
    size = write_tokenizer(tmp_path / "tok")
    config = small_config(size)
    weights = random_state_dict(config)
    weights["h.1.attn.q_proj.weight"] = weights["h.1.attn.q_proj.weight"][:, :32].copy()
    del weights["ln_f.weight"]
    weights["h.0.extra.weight"] = weights["wte.weight"][:2].copy()
    ckpt = write_checkpoint(tmp_path / "c", config, weights=weights)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(str(ckpt))
    message = str(info.value)
    assert "does not match its model config" in message
    assert "missing keys ln_f.weight" in message
    assert "unexpected keys h.0.extra.weight" in message
    assert "h.1.attn.q_proj.weight has shape [64, 32], config implies [64, 64]" in message


def test_compiled_prefix_in_safetensors_keys_is_accepted(tmp_path):
    size = write_tokenizer(tmp_path / "tok")
    config = small_config(size)
    weights = {f"_orig_mod.{k}": v for k, v in random_state_dict(config).items()}
    ckpt = write_checkpoint(tmp_path / "c", config, weights=weights)
    assert resolve_checkpoint(str(ckpt)).weights == ckpt / "model" / "model.safetensors"


def test_weights_must_exist_and_safetensors_is_preferred(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    # a zip's magic, and at least a byte per parameter (fewer cannot hold the model)
    (ckpt / "model" / "pytorch_model.bin").write_bytes(b"PK" + bytes(1 << 20))
    assert resolve_checkpoint(str(ckpt)).weights.name == "model.safetensors"
    (ckpt / "model" / "model.safetensors").unlink()
    assert resolve_checkpoint(str(ckpt)).weights.name == "pytorch_model.bin"
    (ckpt / "model" / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights in checkpoint") as info:
        resolve_checkpoint(str(ckpt))
    assert "model.safetensors" in str(info.value) and "pytorch_model.bin" in str(info.value)


def test_garbage_safetensors_is_reported(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    (ckpt / "model" / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        resolve_checkpoint(str(ckpt))


# validate_checkpoint and `gpt-simple validate` --------------------------------------------
def truncate_tensor_data(ckpt: Path) -> None:
    """Keep the safetensors header, replace the tensor bytes by a hole of the same size (a
    sparse file of zeros): the weights are gone, yet the file holds every tensor's bytes, so
    only a check that reads no weight passes."""
    path = ckpt / "model" / "model.safetensors"
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    path.write_bytes(data[: 8 + header])
    os.truncate(path, len(data))


def test_validate_checkpoint_shape_and_attributes(tmp_path):
    run = write_run_dir(tmp_path / "run", {"checkpoint-4": 4, "checkpoint-9": 9})
    truncate_tensor_data(run / "checkpoints" / "checkpoint-9")  # proves no weight is read
    result = validate_checkpoint(run)
    assert isinstance(result, ValidatedCheckpoint) and isinstance(result, tuple)
    assert len(result) == 3
    assert result._fields == ("checkpoint_dir", "tokenizer_dir", "model_config")
    checkpoint_dir, tokenizer_dir, model_config = result
    assert checkpoint_dir == run / "checkpoints" / "checkpoint-9"
    assert tokenizer_dir == run / "tokenizer"
    assert model_config["n_embd"] == 64 and model_config["vocab_size"] == 384
    assert result.format == "gpt-simple"
    assert result.step == 9
    assert "step 9" in result.selected_because
    assert result.weights_file == checkpoint_dir / "model" / "model.safetensors"
    assert result.eos_id == 0  # <|endoftext|> of the test tokenizer
    assert result.param_count > 0
    assert result.context_length == 128
    assert result.warnings == ()
    assert result.info.path == checkpoint_dir
    with pytest.raises(AttributeError):
        result.no_such_attribute  # noqa: B018


def test_validate_checkpoint_without_loading_the_tokenizer(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c")
    result = validate_checkpoint(str(ckpt), load_tokenizer=False)
    assert result.tokenizer_dir == ckpt / "tokenizer"
    assert result.eos_id is None


def test_validate_cli(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", {"checkpoint-4": 4})
    code, out, _ = cli(capsys, "validate", str(run))
    assert code == 0
    assert f"checkpoint: {run / 'checkpoints' / 'checkpoint-4'}" in out
    assert "step: 4" in out and out.rstrip().endswith("ok")
    code, out, _ = cli(capsys, "validate", "run", "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["step"] == 4 and summary["eos_id"] == 0
    assert summary["tokenizer"] == str(run / "tokenizer")
    assert summary["model_config"]["n_layer"] == 2


def test_validate_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c")
    edit_config(ckpt, bogus=1)
    code, out, err = cli(capsys, "validate", str(ckpt))
    assert code == 2 and out == ""
    assert err.startswith("gpt-simple: error: ") and "unknown key(s) bogus" in err
    assert "Traceback" not in err
    code, _, err = cli(capsys, "validate", str(tmp_path / "nope"))
    assert code == 2 and "no such file or directory" in err
