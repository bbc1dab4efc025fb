"""The backend as the core sees it: registration, pre-flight, resolve, load, threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.protocol import OVERFLOW_TRUNCATE, LoadRequest, Preflight
from gpt_simple_lm_format import layout as gpt_simple_layout
from gpt_simple_torch import plugin
from gpt_simple_torch.plugin import TorchBackend, TorchModel, default_threads, usable_cpus
from tests.conftest import REPO_ROOT
from tests.support.checkpoints import write_checkpoint
from tests.support.plugins import preflight_of
from tests.torch.helpers import full_logits

pytestmark = pytest.mark.torch


@pytest.fixture
def checkpoint(tmp_path: Path) -> CheckpointInfo:
    path = write_checkpoint(tmp_path / "ckpt")
    return gpt_simple_layout.inspect(path, None, load_tokenizer=True)


def test_registers_one_torch_backend() -> None:
    registered = []
    plugin.gpt_simple_register_backends(registered.append)
    assert [type(b) for b in registered] == [TorchBackend]
    backend = registered[0]
    assert backend.name == "torch" and backend.formats == {"gpt-simple": "auto"}
    assert backend.missing_dependencies() == []


CPU_BUILD = {"__version__": "2.13.0+cpu", "cuda": None, "hip": None}
CUDA_BUILD = {"__version__": "2.13.0+cu130", "cuda": "13.0", "hip": None}


def test_the_torch_build_is_read_without_importing_torch() -> None:
    build = plugin.torch_build()
    assert build["__version__"] == torch.__version__
    assert build["cuda"] == torch.version.cuda


def test_preflight_on_a_cpu_only_torch(
    checkpoint: CheckpointInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugin, "torch_build", lambda: CPU_BUILD)
    backend = TorchBackend()
    assert preflight_of(backend, checkpoint, LoadRequest()).problems == ()
    (problem,) = preflight_of(backend, checkpoint, LoadRequest(dtype="fp16")).problems
    assert problem.field == "model.dtype"  # auto is the CPU here: refused before loading
    assert "fp16 on the CPU" in problem.message and "device auto is the CPU" in problem.message
    (problem,) = preflight_of(backend, checkpoint, LoadRequest(device="cuda")).problems
    assert problem.field == "--device"
    assert "torch 2.13.0+cpu is a CPU-only build" in problem.message
    (problem,) = preflight_of(backend, checkpoint, LoadRequest(dtype="fp16", device="cpu")).problems
    assert "fp16 on the CPU" in problem.message and "use fp32" in problem.message
    (problem,) = preflight_of(backend, checkpoint, LoadRequest(dtype="int8")).problems
    assert "cannot run dtype int8" in problem.message  # the core's checks of the declarations
    (problem,) = preflight_of(backend, checkpoint, LoadRequest(context_overflow="wrap")).problems
    assert "context_overflow wrap" in problem.message and "truncate" in problem.message


def test_preflight_on_a_cuda_build_before_torch_is_imported(
    checkpoint: CheckpointInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugin, "torch_build", lambda: CUDA_BUILD)
    monkeypatch.delitem(sys.modules, "torch")  # whether a GPU is there is unknown yet
    backend = TorchBackend()
    assert (
        preflight_of(backend, checkpoint, LoadRequest(dtype="fp16", device="cuda")) == Preflight()
    )
    (warning,) = preflight_of(backend, checkpoint, LoadRequest(dtype="fp16")).warnings
    assert "fp16 needs a GPU" in warning


def test_resolve_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TorchBackend()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    resolved = backend.resolve(LoadRequest(threads=3))
    assert (resolved.device, resolved.dtype, resolved.threads) == ("cpu", "fp32", 3)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert backend.resolve(LoadRequest()).device == "mps"
    assert backend.resolve(LoadRequest()).dtype == "fp16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert (backend.resolve(LoadRequest()).device, backend.resolve(LoadRequest()).dtype) == (
        "cuda",
        "bf16",
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert backend.resolve(LoadRequest(device="cuda:1")).dtype == "fp16"
    explicit = LoadRequest(device="cpu", dtype="bf16")
    assert backend.resolve(explicit) == explicit


def test_load_runs_the_checkpoint(checkpoint: CheckpointInfo) -> None:
    model = TorchBackend().load(checkpoint, LoadRequest(device="cpu", threads=1))
    assert isinstance(model, TorchModel)
    assert (model.dtype, model.device, model.context_length) == ("fp32", "cpu", 128)
    assert model.context_overflow == "extrapolate"
    assert model.notes == {"threads": 1, "weights": "model.safetensors"}
    assert len(model.tokenizer) == checkpoint.details["tokenizer_size"]
    ids = model.tokenizer.encode("The assert statement")
    logits = model.forward([0], [ids])
    np.testing.assert_allclose(logits[0], full_logits(model.module, ids), atol=2e-5)
    model.close()


def test_load_options(checkpoint: CheckpointInfo) -> None:
    backend = TorchBackend()
    request = LoadRequest(device="cpu", threads=1, context_overflow="truncate")
    assert backend.load(checkpoint, request).context_overflow == OVERFLOW_TRUNCATE
    bf16 = backend.load(checkpoint, LoadRequest(device="cpu", dtype="bf16", threads=1))
    assert bf16.dtype == "bf16" and bf16.module.wte.weight.dtype == torch.bfloat16
    assert np.isfinite(bf16.forward([0], [[1, 2, 3]])).all()


def test_default_threads_stay_within_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == usable_cpus()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "999")
    assert default_threads() == usable_cpus()


IMPORT_SCRIPT = """
import json, os, sys
import gpt_simple_torch.plugin as plugin
from gpt_simple_core.protocol import LoadRequest
torch_after_import = "torch" in sys.modules
plugin.TorchBackend().resolve(LoadRequest())
print(json.dumps({"torch_after_import": torch_after_import,
                  "torch_after_resolve": "torch" in sys.modules,
                  "wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def test_plugin_import_is_torch_free_and_torch_starts_passive() -> None:
    env = {"PATH": "", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert json.loads(result.stdout) == {
        "torch_after_import": False,
        "torch_after_resolve": True,
        "wait_policy": "PASSIVE",
    }


def test_torch_imported_first_gets_a_warning_once() -> None:
    """Too late to ask OpenMP not to spin: the log says so, with the fix."""
    script = (
        "import torch, gpt_simple_torch.plugin as plugin\n"
        "from gpt_simple_core.protocol import LoadRequest\n"
        "plugin.TorchBackend().resolve(LoadRequest())\n"
        "plugin.TorchBackend().resolve(LoadRequest())\n"
    )
    env = {"PATH": "", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert (result.stdout + result.stderr).count("OMP_WAIT_POLICY=PASSIVE") == 1
    quiet = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},  # the user chose: nothing to say
    )
    assert "OMP_WAIT_POLICY" not in quiet.stdout + quiet.stderr
