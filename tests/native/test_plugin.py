"""Detection of HipGPT layouts, the backend's pre-flight and loading, and plugin hygiene."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pluggy
import pytest

from gpt_simple_core import hookspecs
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.errors import CheckpointError, TokenizerError
from gpt_simple_core.protocol import Backend, LoadRequest
from gpt_simple_lm_format import plugin as lm_format_plugin
from gpt_simple_native import plugin
from gpt_simple_native.plugin import NativeBackend, NativeModel, inspect
from tests.native.hipgpt_writer import character_tokens, random_model, write_tokenizer
from tests.support.checkpoints import write_checkpoint, write_run_dir
from tests.support.plugins import preflight_of

FIXTURE_CONFIG = {"V": 1000, "S": 32, "E": 128, "L": 2, "H": 4, "F": 256}


def _claim(path: Path, tokenizer: Path | None = None) -> CheckpointInfo:
    info = inspect(path, tokenizer, True)
    assert info is not None, f"{path} was not claimed"
    return info


def _copy_fixture(native_reference: Path, folder: Path, name: str = "gpt_checkpoint.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(native_reference / "tokenizer.json", folder / "tokenizer.json")
    return Path(shutil.copy(native_reference / "gpt_checkpoint.bin", folder / name))


def _tiny_run(folder: Path, steps: list[int], run: str = "myrun") -> None:
    """A HipGPT run folder: <run>_step<N>.bin (+ configs) and tokenizer.json, no link yet."""
    for seed, step in enumerate(steps):
        random_model(V=5, S=3, E=4, L=1, H=2, F=4, seed=seed).write(
            folder / f"{run}_step{step}.bin"
        )
        (folder / f"{run}_step{step}_config.json").write_text("{}", encoding="utf-8")
    write_tokenizer(folder / "tokenizer.json", character_tokens(5), [])


# --- what is claimed, and what it resolves to ---------------------------------------------------


def test_bin_file(native_reference: Path) -> None:
    path = native_reference / "gpt_checkpoint.bin"
    info = _claim(path)
    assert info.format == "hipgpt"
    assert info.path == info.weights == path.resolve()
    assert info.tokenizer == native_reference / "tokenizer.json"
    assert info.config == FIXTURE_CONFIG
    assert info.context_length == 32
    assert info.eos_id is None
    assert info.step is None and info.selected_because is None
    assert info.param_count == (path.stat().st_size - 16 - 12 * 2) // 4
    assert info.details == {"tokenizer_format": "v2"}
    assert inspect(path, None, False).details == {}  # tokenizer not loaded


def test_any_bin_name_with_a_hipgpt_header(native_reference: Path, tmp_path: Path) -> None:
    path = _copy_fixture(native_reference, tmp_path, "final_model.bin")
    assert _claim(path).config == FIXTURE_CONFIG


def test_folder_layout(native_reference: Path, tmp_path: Path) -> None:
    _copy_fixture(native_reference, tmp_path / "docs_era")
    info = _claim(tmp_path / "docs_era")
    assert info.path == (tmp_path / "docs_era" / "gpt_checkpoint.bin").resolve()
    assert info.tokenizer == tmp_path / "docs_era" / "tokenizer.json"
    assert "gpt_checkpoint.bin" in info.selected_because


def test_run_folder_follows_hipgpt_latest_link(tmp_path: Path) -> None:
    run = tmp_path / "project" / "checkpoints" / "myrun"
    _tiny_run(run, [100, 200, 300])
    # HipGPT writes the target relative to the directory training ran in, not to the link.
    (run / "latest_checkpoint.bin").symlink_to("checkpoints/myrun/myrun_step200.bin")
    assert not (run / "latest_checkpoint.bin").exists()  # dangling when read normally
    for pointed_at in (run, run / "latest_checkpoint.bin"):
        info = _claim(pointed_at)
        assert info.path == run / "myrun_step200.bin"
        assert info.step == 200
        assert "latest_checkpoint.bin" in info.selected_because
        assert "checkpoints/myrun/myrun_step200.bin" in info.selected_because
        assert info.tokenizer == run / "tokenizer.json"


def test_run_folder_follows_an_ordinary_link(tmp_path: Path) -> None:
    _tiny_run(tmp_path / "myrun", [100, 200])
    (tmp_path / "myrun" / "latest_checkpoint.bin").symlink_to("myrun_step100.bin")
    assert _claim(tmp_path / "myrun").step == 100


def test_run_folder_without_link_takes_the_highest_step(tmp_path: Path) -> None:
    _tiny_run(tmp_path / "myrun", [9, 10, 2])  # numeric, not lexical, order
    info = _claim(tmp_path / "myrun")
    assert info.path == (tmp_path / "myrun" / "myrun_step10.bin").resolve()
    assert info.step == 10
    assert "highest step (10)" in info.selected_because
    assert "no latest_checkpoint.bin" in info.selected_because


def test_run_folder_with_a_broken_link_falls_back(tmp_path: Path) -> None:
    _tiny_run(tmp_path / "myrun", [5, 7])
    (tmp_path / "myrun" / "latest_checkpoint.bin").symlink_to("gone/myrun_step99.bin")
    info = _claim(tmp_path / "myrun")
    assert info.step == 7
    assert "does not exist" in info.selected_because
    assert any("myrun_step99.bin" in warning for warning in info.warnings)


def test_tokenizer_override(native_reference: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt" / "gpt_checkpoint.bin"
    checkpoint.parent.mkdir()
    shutil.copy(native_reference / "gpt_checkpoint.bin", checkpoint)
    with pytest.raises(TokenizerError, match="no tokenizer for HipGPT checkpoint"):
        inspect(checkpoint, None, True)
    as_file = _claim(checkpoint, native_reference / "tokenizer.json")
    assert as_file.tokenizer == native_reference / "tokenizer.json"
    as_folder = _claim(checkpoint, native_reference)
    assert as_folder.tokenizer == native_reference / "tokenizer.json"
    with pytest.raises(TokenizerError, match="given explicitly"):
        inspect(checkpoint, tmp_path / "nowhere.json", True)


def test_tokenizer_size_must_equal_v(native_reference: Path, tmp_path: Path) -> None:
    checkpoint = _copy_fixture(native_reference, tmp_path)
    write_tokenizer(tmp_path / "tokenizer.json", character_tokens(999), [])
    with pytest.raises(CheckpointError) as info:
        inspect(checkpoint, None, True)
    assert "999 tokens" in str(info.value) and "V=1000" in str(info.value)
    assert str(checkpoint.resolve()) in str(info.value)
    unchecked = inspect(checkpoint, None, False)  # sizes are only compared once loaded
    with pytest.raises(CheckpointError, match="999 tokens"):
        NativeBackend().load(unchecked, LoadRequest())


def test_malformed_checkpoint_is_claimed_and_explained(tmp_path: Path) -> None:
    model = random_model(V=5, S=3, E=4, L=1, H=2, F=4)
    (tmp_path / "gpt_checkpoint.bin").write_bytes(model.to_bytes()[:-8])
    write_tokenizer(tmp_path / "tokenizer.json", character_tokens(5), [])
    with pytest.raises(CheckpointError, match="truncated"):
        inspect(tmp_path, None, True)


# --- what is not claimed ------------------------------------------------------------------------


def test_project_root_is_refused_with_directions(tmp_path: Path) -> None:
    _tiny_run(tmp_path / "checkpoints" / "run_a", [10])
    _tiny_run(tmp_path / "checkpoints" / "run_b", [10], run="run_b")
    with pytest.raises(CheckpointError) as info:
        inspect(tmp_path, None, True)
    message = str(info.value)
    assert "looks like a HipGPT project root" in message
    assert "checkpoints/run_a/" in message and "checkpoints/run_b/" in message


def test_gpt_simple_layouts_are_left_to_the_core(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    run = write_run_dir(tmp_path / "run", {"checkpoint-100": 100})
    for path in (checkpoint, run, run / "checkpoints" / "checkpoint-100"):
        assert inspect(path, None, True) is None
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(lm_format_plugin)
    manager.register(plugin)  # registered last, so asked first
    claimed = manager.hook.gpt_simple_inspect_checkpoint(
        path=run, tokenizer=None, load_tokenizer=False
    )
    assert claimed.format == "gpt-simple"


def test_zip_bin_files_are_not_claimed(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    assert inspect(tmp_path / "pytorch_model.bin", None, True) is None
    (tmp_path / "other.bin").write_bytes(b"PK\x03\x04" + bytes(60))
    assert inspect(tmp_path / "other.bin", None, True) is None


def test_other_files_are_not_claimed(tmp_path: Path) -> None:
    (tmp_path / "legacy.bin").write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    for path in ("legacy.bin", "notes.txt", "empty", "absent.bin"):
        assert inspect(tmp_path / path, None, True) is None


# --- the backend --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_info(native_reference: Path) -> CheckpointInfo:
    return _claim(native_reference / "gpt_checkpoint.bin")


def test_registration() -> None:
    registered: list[Backend] = []
    plugin.gpt_simple_register_backends(registered.append)
    [backend] = registered
    assert isinstance(backend, NativeBackend)
    assert backend.name == "native"
    assert backend.formats == {"hipgpt": "auto"}
    assert (backend.dtypes, backend.devices, backend.requires) == (("fp32",), ("cpu",), ("numpy",))


@pytest.mark.parametrize(
    "request_",
    [LoadRequest(), LoadRequest(dtype="fp32", device="cpu"), LoadRequest(threads=1)],
)
def test_preflight_accepts_fp32_on_cpu(fixture_info: CheckpointInfo, request_: LoadRequest) -> None:
    assert preflight_of(NativeBackend(), fixture_info, request_).problems == ()


@pytest.mark.parametrize(
    ("request_", "fragments"),
    [
        (LoadRequest(dtype="fp16"), ("fp16", "float32", "fp32 or auto")),
        (LoadRequest(dtype="bf16"), ("bf16", "float32", "fp32 or auto")),
        (LoadRequest(device="cuda:0"), ("cuda:0", "CPU", "cpu or auto")),
        (LoadRequest(device="mps"), ("mps", "CPU", "cpu or auto")),
        (LoadRequest(device="vulkan:1"), ("vulkan:1", "CPU", "cpu or auto")),
    ],
)
def test_preflight_explains_refusals(
    fixture_info: CheckpointInfo, request_: LoadRequest, fragments: tuple[str, ...]
) -> None:
    [problem] = preflight_of(NativeBackend(), fixture_info, request_).problems
    for fragment in fragments:
        assert fragment in problem.message


def test_preflight_warns_that_context_overflow_does_not_apply(
    fixture_info: CheckpointInfo,
) -> None:
    request = LoadRequest(context_overflow="extrapolate")
    result = preflight_of(NativeBackend(), fixture_info, request)
    assert result.problems == ()
    assert "context_overflow=extrapolate is ignored" in result.warnings[0]
    assert "fixed window of the last tokens" in result.warnings[0]


def test_load(fixture_info: CheckpointInfo) -> None:
    model = NativeBackend().load(fixture_info, LoadRequest(dtype="auto", device="auto"))
    assert isinstance(model, NativeModel)
    assert model.forward([0], [[211, 108]]).shape == (1, 1000)
    model.close()


def test_plugin_import_and_inspection_do_not_import_torch(native_reference: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gpt_simple_native import plugin\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'on import'\n"
        f"plugin.inspect(Path({str(native_reference / 'gpt_checkpoint.bin')!r}), None, True)\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'on inspection'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
