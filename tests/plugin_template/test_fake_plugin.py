"""A third-party plugin declares a dtype (``q4``), a device (``fake0``) and an option
(``n_gpu_layers``) the core has never heard of: planning validates them through the plugin
alone, bad values are ``file:line`` problems, and the validated options reach its load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugin_template.conftest import run


def _sweep(folder: Path, records: list[dict]) -> Path:
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "fake.json").write_text("{}", encoding="utf-8")
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _record(**model) -> dict:
    return {
        "prompt": "fa",
        "model": {"checkpoint": "model", **model},
        "generation": {"greedy": True, "max_new_tokens": 3},
    }


@pytest.fixture
def gpt_simple(venv: Path):
    def call(*argv: str, cwd: Path):
        return run(venv / "bin" / "gpt-simple", *argv, cwd=cwd)

    return call


def test_the_plugin_declares_what_it_runs(gpt_simple, tmp_path: Path) -> None:
    result = gpt_simple("backends", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fake = {b["name"]: b for b in json.loads(result.stdout)["backends"]}["fake"]
    assert fake["package"] == "gpt-simple-fake" and fake["version"] == "0.1.0"
    assert fake["dtypes"] == ["q4", "fp32"] and fake["devices"] == ["fake0", "cpu"]
    assert fake["options"] == {"n_gpu_layers": "0", "flash": "False"}


def test_new_dtype_device_and_options_plan_and_run(gpt_simple, tmp_path: Path) -> None:
    (tmp_path / "gpt-simple.toml").write_text("[backend.fake]\nn_gpu_layers = 7\n")
    sweep = _sweep(
        tmp_path,
        [
            _record(dtype="q4"),
            _record(dtype="q4", options={"n_gpu_layers": 2, "flash": True}),
        ],
    )
    planned = gpt_simple(
        "batch-generate", "--input", str(sweep), "--device", "fake0:1", "--dry-run",
        "--plan-format", "json", cwd=tmp_path,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    groups = json.loads(planned.stdout)["groups"]
    assert [(g["dtype"], g["device"], g["options"]) for g in groups] == [
        ("q4", "fake0:1", {"n_gpu_layers": 7, "flash": False}),  # the config table
        ("q4", "fake0:1", {"n_gpu_layers": 2, "flash": True}),  # the record's own, over it
    ]
    ran = gpt_simple("batch-generate", "--input", str(sweep), "--device", "fake0:1", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    out = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [o["completion"] for o in out] == ["ke ", "ke "]
    assert [o["meta"]["notes"]["n_gpu_layers"] for o in out] == [7, 2]
    assert out[0]["meta"]["notes"]["device_kind"] == "fake0"
    assert out[0]["meta"]["notes"]["device_index"] == 1
    assert out[0]["meta"]["dtype"] == "q4"


def test_bad_values_are_file_line_problems(gpt_simple, tmp_path: Path) -> None:
    sweep = _sweep(
        tmp_path,
        [
            _record(dtype="q4"),  # 1: fine
            _record(dtype="q5"),  # 2: no backend runs it
            _record(options={"n_gpu_layers": -1}),  # 3: the plugin's validator
            _record(options={"n_gpu_layer": 1}),  # 4: unknown option, with a hint
            _record(options={"n_gpu_layers": "all"}),  # 5: wrong type
            _record(options={"flash": True}),  # 6: the plugin's own pre-flight (device cpu)
        ],
    )
    result = gpt_simple(
        "batch-generate", "--input", str(sweep), "--device", "cpu", "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 2
    err = result.stderr
    assert f"{sweep}:2: model.dtype: backend 'fake' cannot run dtype q5 (it runs q4, fp32)" in err
    assert f"{sweep}:3: model.options.n_gpu_layers: must be >= 0, got -1" in err
    assert (
        f"{sweep}:4: model.options.n_gpu_layer: unknown key (did you mean 'n_gpu_layers'?)" in err
    )
    assert f"{sweep}:5: model.options.n_gpu_layers: must be an integer, got the string 'all'" in err
    assert f"{sweep}:6: model.options.flash: flash needs a fake device" in err
    assert f"{sweep}:1:" not in err


def test_a_bad_config_table_names_the_file(gpt_simple, tmp_path: Path) -> None:
    (tmp_path / "gpt-simple.toml").write_text("[backend.fake]\nn_gpu_layers = -3\n")
    sweep = _sweep(tmp_path, [_record()])
    result = gpt_simple("batch-generate", "--input", str(sweep), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert "gpt-simple.toml: backend.fake.n_gpu_layers: must be >= 0, got -3" in result.stderr
