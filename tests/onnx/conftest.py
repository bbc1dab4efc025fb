"""Fixtures of the ONNX suite: tiny checkpoints of several architectures, each exported once
per session (exports are the expensive part: ~10 s each on 2 cores), and the torch backend
on the same weights as the reference.

Every test sees the plugins ``torch`` (entry point) and ``onnx`` (registered here, so the
suite also runs where the package is not installed with its entry point), one thread, and a
session-wide ONNX cache under a temporary ``$GPT_SIMPLE_CACHE``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from gpt_simple_core import logs, registry
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.protocol import ExportOptions
from gpt_simple_lm_format import layout as gpt_simple_layout
from gpt_simple_onnx import layout
from gpt_simple_onnx import plugin as onnx_plugin
from gpt_simple_onnx.cache import CACHE_ENV
from gpt_simple_onnx.export import export_checkpoint
from tests.onnx.helpers import ARCHITECTURES, EXTERNAL_DATA
from tests.support import plugins
from tests.support.checkpoints import (
    PEAKED_SCALE,
    random_state_dict,
    small_config,
    write_checkpoint,
    write_tokenizer,
)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)  # the suite shares 2 cores with other work


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's ``$GPT_SIMPLE_CACHE``: on-demand exports are shared by all tests."""
    return tmp_path_factory.mktemp("gpt-simple-cache")


@pytest.fixture(autouse=True)
def _plugins(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> Iterator[None]:
    monkeypatch.setenv(registry.PINS_ENV_VAR, "torch")
    monkeypatch.setenv(CACHE_ENV, str(cache_root))
    logs.configure()  # structlog writes to this test's stderr
    plugins.reset()
    plugins.add_plugin(onnx_plugin)
    yield
    plugins.reset()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CheckpointInfo]:
    """One gpt-simple checkpoint per architecture, with peaked random weights."""
    root = tmp_path_factory.mktemp("checkpoints")
    infos = {}
    for seed, (name, overrides) in enumerate(ARCHITECTURES.items()):
        folder = root / name
        size = write_tokenizer(folder / "tokenizer")
        config = small_config(size, **overrides)
        weights = random_state_dict(config, seed=seed, scale=PEAKED_SCALE)
        write_checkpoint(folder, config, weights=weights, step=100 + seed)
        infos[name] = gpt_simple_layout.inspect(folder, None, load_tokenizer=True)
    return infos


Exported = Callable[..., CheckpointInfo]


@pytest.fixture(scope="session")
def exported(
    tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, CheckpointInfo]
) -> Exported:
    """``exported(name, quantize=None, dtype="fp32")``: the export folder of an architecture
    (inspected as a checkpoint), made on first use and kept for the session."""
    root = tmp_path_factory.mktemp("exports")
    made: dict[tuple, CheckpointInfo] = {}

    def get(name: str, *, quantize: str | None = None, dtype: str = "fp32") -> CheckpointInfo:
        key = (name, quantize, dtype)
        if key not in made:
            out = root / "-".join(str(part) for part in key if part)
            export_checkpoint(
                checkpoints[name],
                out,
                ExportOptions(dtype=dtype, quantize=quantize),
                external_data=name in EXTERNAL_DATA and quantize is None,
            )
            made[key] = layout.inspect(out, None, load_tokenizer=True)
        return made[key]

    return get
