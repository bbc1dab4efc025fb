"""Backend choice (explicit, automatic by priority, pre-flight), plugin loading and pinning,
and ``gpt-simple backends``."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path
from types import MappingProxyType

import pluggy
import pytest

from gpt_simple_core import registry as registry_module
from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.plan.backend_choice import Asked, choose_backend
from gpt_simple_core.protocol import EXPLICIT, Format, LoadedModel, LoadRequest
from gpt_simple_core.registry import Registry
from gpt_simple_lm_format import plugin as lm_format_plugin
from tests.core.helpers import PlanOnlyBackend, _BackendsPlugin, cli, register_backends, write_jsonl
from tests.support.toy_backend import ToyBackend


class HighToy(ToyBackend):
    name = "toy-high"
    priority = 5
    dtypes = ("fp32",)


class Needy(ToyBackend):
    name = "needy"
    priority = 10
    requires = ("gpt_simple_no_such_module_xyz",)

    def describe_runtime(self):  # must not be called while dependencies are missing
        raise AssertionError("describe_runtime called without dependencies")


class Quantizing(ToyBackend):
    name = "quantizing"
    formats = {"toy": EXPLICIT}
    quantizations = ("int8", "q4")


class Exporter(ToyBackend):
    name = "exporter"
    formats = {"toy": EXPLICIT}

    def describe_runtime(self):
        return {"providers": ["CPUExecutionProvider"]}


BACKENDS = {b.name: b for b in (ToyBackend(), HighToy(), Needy(), Exporter(), Quantizing())}
TOY = CheckpointInfo(format="toy", path=Path("/x"), tokenizer=None)
GPT = CheckpointInfo(format="gpt-simple", path=Path("/y"), tokenizer=None)


GPT_FORMAT = Format(
    "gpt-simple", "trainer checkpoints", "pip install 'gpt-simple-inference[torch]'"
)


def registry_of(backends=BACKENDS, errors=None, formats=(GPT_FORMAT,)) -> Registry:
    """A registry holding exactly these backends (no plugin loading involved)."""
    return Registry(
        backends=MappingProxyType(dict(backends)),
        exporters=MappingProxyType({}),
        formats=MappingProxyType({f.name: f for f in formats}),
        plugin_errors=MappingProxyType(errors or {}),
        sources=MappingProxyType({}),
        manager=pluggy.PluginManager("gpt_simple"),
    )


def choose(info=TOY, requested=None, backends=BACKENDS, errors=None, **request):
    registry = registry_of(backends, errors)
    return choose_backend(info, requested, Asked(LoadRequest(**request)), registry)


def messages(choice) -> tuple[str, ...]:
    return tuple(p.message for p in choice.problems)


def test_auto_choice_by_priority_skipping_refusals():
    choice = choose()
    assert choice.backend.name == "toy-high"
    assert choice.problems == ()
    assert choice.because.startswith("auto: highest-priority installed backend for toy")
    assert "backend 'needy' needs gpt_simple_no_such_module_xyz, which is not installed" in (
        choice.because
    )
    assert choose(dtype="fp16").backend.name == "toy"  # toy-high runs fp32 only


def test_auto_priority_ties_break_by_name():
    class Other(ToyBackend):
        name = "a-toy"

    assert choose(backends={"toy": ToyBackend(), "a-toy": Other()}).backend.name == "a-toy"


def test_nothing_accepts_the_request():
    choice = choose(dtype="bf16")
    assert choice.backend is None
    assert "backend 'toy' cannot run dtype bf16 (it runs fp32, fp16)" in messages(choice)
    assert "backend 'toy-high' cannot run dtype bf16 (it runs fp32)" in messages(choice)
    assert {p.field for p in choice.problems} == {"model.dtype", "model.backend"}  # + needy
    choice = choose(device="cuda:1")
    assert "backend 'toy' cannot run on cuda:1 (it runs on cpu)" in messages(choice)
    assert choice.problems[-1].field == "--device"


def test_missing_dependencies_message():
    choice = choose(requested="needy")
    assert choice.backend.name == "needy"
    assert messages(choice) == (
        "backend 'needy' needs gpt_simple_no_such_module_xyz, which is not installed "
        "(pip install gpt_simple_no_such_module_xyz)",  # no distribution: the import names
    )
    assert Needy().missing_dependencies() == ["gpt_simple_no_such_module_xyz"]
    assert ToyBackend().missing_dependencies() == []


def test_explicit_choices():
    choice = choose(requested="exporter")
    assert (choice.backend.name, choice.because, choice.problems) == ("exporter", "requested", ())
    choice = choose(requested="nope")
    assert messages(choice) == (
        "unknown backend 'nope' (installed: exporter, needy, quantizing, toy, toy-high)",
    )
    choice = choose(requested="torch", errors={"torch": "ImportError: no torch"})
    assert messages(choice) == ("backend 'torch' failed to load: ImportError: no torch",)
    choice = choose(requested="toy", dtype="bf16")
    assert messages(choice) == ("backend 'toy' cannot run dtype bf16 (it runs fp32, fp16)",)


def test_quantize_is_checked_against_what_each_backend_declares():
    """``model.quantize`` goes to a backend that declares it; the others refuse it, naming the
    ones that could."""
    choice = choose(quantize="q4")
    assert choice.backend is None  # the automatic ones quantize nothing
    assert (
        "backend 'toy' cannot quantize weights to q4 (it runs unquantized weights only); "
        "quantizing can (model.backend / --backend)"
    ) in messages(choice)
    assert "model.quantize" in {p.field for p in choice.problems}
    choice = choose(requested="quantizing", quantize="q4")
    assert choice.problems == () and choice.request.quantize == "q4"
    choice = choose(requested="quantizing", quantize="int3")
    assert messages(choice) == (
        "backend 'quantizing' cannot quantize weights to int3 (it quantizes to int8, q4)",
    )


def test_a_backend_that_cannot_run_the_format_says_what_would():
    backends = {**BACKENDS, "plan-only": PlanOnlyBackend()}
    choice = choose(GPT, requested="toy", backends=backends)
    assert messages(choice) == ("backend 'toy' cannot run gpt-simple checkpoints; use plan-only",)
    choice = choose(GPT, requested="toy")
    assert messages(choice) == (
        "backend 'toy' cannot run gpt-simple checkpoints; no installed backend can",
    )


def test_formats_run_only_when_asked_and_install_hints():
    only_explicit = {"exporter": Exporter()}
    choice = choose(backends=only_explicit)
    assert messages(choice) == (
        "no installed backend runs toy checkpoints automatically; name one that can with "
        "--backend / model.backend: exporter",
    )
    choice = choose(GPT, backends={})  # the hint comes from the format's own plugin
    assert messages(choice) == (
        "no installed backend runs gpt-simple checkpoints automatically "
        "(pip install 'gpt-simple-inference[torch]')",
    )


def test_backend_problems_in_a_plan_point_at_the_record(tmp_path, toy_ckpt, capsys):
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "a"},
            {"prompt": "b", "model": {"checkpoint": "toy", "backend": "nope"}},
            {"prompt": "c", "model": {"checkpoint": "toy", "dtype": "bf16"}},
        ],
    )
    code, out, err = cli(
        capsys, "batch-generate", "--input", str(source), "--checkpoint", "toy", "--dry-run"
    )
    assert code == 2
    assert f"{source}:2: model.backend: unknown backend 'nope' (installed: toy)" in err
    assert f"{source}:3: model.dtype: backend 'toy' cannot run dtype bf16" in err
    assert "[1] " in out  # the runnable group is still shown


def test_model_quantize_groups_records_and_reaches_the_backend(tmp_path, toy, toy_ckpt, capsys):
    """Records asking different quantizations load separately; ``none`` undoes a config's;
    the plan shows it; the backend's request carries it; an empty name is a problem."""
    register_backends(Quantizing())
    config = tmp_path / "gpt-simple.toml"
    config.write_text('[model]\nquantize = "q4"\n')
    rows = [
        {"prompt": "a"},
        {"prompt": "b", "model": {"quantize": "int8"}},
        {"prompt": "c", "model": {"quantize": "none"}},
        {"prompt": "d"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["--input", str(source), "--checkpoint", str(toy_ckpt), "--backend", "quantizing"]
    code, out, err = cli(capsys, "batch-generate", *args, "--config", str(config), "--dry-run")
    assert code == 0, err
    assert out.count("weights quantized to q4") == 1 and "weights quantized to int8" in out
    code, out, err = cli(
        capsys, "batch-generate", *args, "--config", str(config), "--max-new-tokens", "2"
    )
    assert code == 0, err
    assert sorted(str(m.quantize) for m in toy.loaded) == ["None", "int8", "q4"]
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["a", "b", "c", "d"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "model": {"quantize": " "}}])
    code, _, err = cli(capsys, "batch-generate", "--input", str(bad), "--dry-run")
    assert code == 2 and f"{bad}:1: model.quantize: must name a quantization, or be none" in err


# Plugin loading -------------------------------------------------------------------------
PLUGIN = _BackendsPlugin([HighToy()], "good")


class OldPlugin:
    GPT_SIMPLE_PLUGIN_API = 0

    @staticmethod
    def gpt_simple_register_backends(register):  # never called: refused first
        raise AssertionError("an incompatible plugin was asked to register")


class UnversionedPlugin:
    pass


OLD = OldPlugin()
UNVERSIONED = UnversionedPlugin()


def fake_entry_points(monkeypatch, *points: tuple[str, str]) -> None:
    eps = [EntryPoint(name, value, "gpt_simple") for name, value in points]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)


def test_entry_points_load_and_a_broken_one_is_reported_not_fatal(monkeypatch, capsys):
    fake_entry_points(
        monkeypatch,
        ("good", "tests.core.test_backends:PLUGIN"),
        ("broken", "tests.core.no_such_module_here"),
    )
    registry = Registry.discover(pins=None)
    assert list(registry.backends) == ["toy-high"]
    assert "ModuleNotFoundError" in registry.plugin_errors["broken"]
    assert "plugin not loaded" in capsys.readouterr().err


def test_pins_choose_which_entry_points_load_with_what_they_require(monkeypatch):
    fake_entry_points(
        monkeypatch,
        ("good", "tests.core.test_backends:PLUGIN"),
        ("gpt-simple-lm", "gpt_simple_lm_format.plugin"),
        ("torch", "gpt_simple_torch.plugin"),
    )
    monkeypatch.setenv(registry_module.PINS_ENV_VAR, "")
    assert Registry.discover().backends == {}
    monkeypatch.setenv(registry_module.PINS_ENV_VAR, "good, missing")
    registry = Registry.discover()
    assert list(registry.backends) == ["toy-high"]
    assert registry.plugin_errors == {"missing": "named in GPT_SIMPLE_PLUGINS but not installed"}
    # torch declares it needs the gpt-simple-lm format plugin: pinning torch loads both
    monkeypatch.setenv(registry_module.PINS_ENV_VAR, "torch")
    registry = Registry.discover()
    assert sorted(registry.plugin_names()) == ["gpt-simple-lm", "torch"]
    assert "gpt-simple" in registry.formats


def test_a_plugin_for_another_plugin_api_is_reported_not_loaded(monkeypatch, capsys):
    fake_entry_points(
        monkeypatch,
        ("old", "tests.core.test_backends:OLD"),
        ("unversioned", "tests.core.test_backends:UNVERSIONED"),
        ("good", "tests.core.test_backends:PLUGIN"),
    )
    registry = Registry.discover(pins=None)
    assert list(registry.backends) == ["toy-high"]
    assert registry.plugin_errors["old"].startswith("is written for plugin API 0; this ")
    assert "provides plugin API 1" in registry.plugin_errors["old"]
    assert registry.plugin_errors["unversioned"].startswith("declares no GPT_SIMPLE_PLUGIN_API")


def test_two_backends_with_one_name_keep_the_first_and_report_the_second():
    register_backends(ToyBackend(), name="one")
    registry = register_backends(ToyBackend(), name="two")
    assert list(registry.backends) == ["toy"]
    assert registry.plugin_errors["two"] == (
        "ValueError: registers a backend named 'toy', which plugin 'one' registered first"
    )


def test_registering_something_else_is_reported():
    registry = register_backends(object())  # type: ignore[arg-type]
    assert "which is not a Backend" in registry.plugin_errors["test-backends"]


def test_the_registry_is_immutable():
    registry = Registry.discover(pins=(), extra_plugins=[lm_format_plugin])
    with pytest.raises(TypeError):
        registry.backends["x"] = ToyBackend()  # type: ignore[index]
    with pytest.raises(AttributeError):
        registry.backends = {}  # type: ignore[misc]


# `gpt-simple backends` ---------------------------------------------------------------------
def test_backends_command_lists_the_toy_backend(toy, capsys):
    register_backends(Needy(), Exporter(), Quantizing())
    code, out, _ = cli(capsys, "backends", "--json")
    assert code == 0
    data = json.loads(out)
    by_name = {b["name"]: b for b in data["backends"]}
    assert by_name["toy"] == {
        "name": "toy",
        "package": "tests.support.toy_backend",  # not from a distribution: the module
        "version": None,
        "formats": {"toy": "auto"},
        "priority": 0,
        "dtypes": ["fp32", "fp16"],
        "devices": ["cpu"],
        "quantizations": [],
        "context_overflow": ["extrapolate"],
        "options": None,
        "dependencies": "ok",
    }
    assert by_name["quantizing"]["quantizations"] == ["int8", "q4"]
    assert by_name["needy"]["dependencies"] == (
        "missing: gpt_simple_no_such_module_xyz (pip install gpt_simple_no_such_module_xyz)"
    )
    assert data["plugin_api"] == 1
    assert "gpt-simple" in data["formats"]
    assert by_name["exporter"]["providers"] == ["CPUExecutionProvider"]
    assert by_name["exporter"]["formats"] == {"toy": "explicit"}
    code, out, _ = cli(capsys, "backends")
    assert code == 0
    assert "toy: tests.support.toy_backend\n  formats: toy (auto); priority 0\n" in out
    assert "  dtypes: fp32, fp16; devices: cpu\n  context overflow: extrapolate\n" in out
    assert "  dependencies: missing: gpt_simple_no_such_module_xyz" in out
    assert "  providers: ['CPUExecutionProvider']" in out
    assert "  quantizations (model.quantize): int8, q4\n" in out


def test_backends_command_shows_plugin_errors_and_empty_installs(monkeypatch, capsys):
    monkeypatch.setenv(registry_module.PINS_ENV_VAR, "ghost")
    from tests.support import plugins

    plugins.reset()
    code, out, _ = cli(capsys, "backends")
    assert code == 0
    assert "no backends installed (pip install -c constraints.txt '.[torch]'" in out
    assert "ghost: failed to load: named in GPT_SIMPLE_PLUGINS but not installed" in out
    code, out, _ = cli(capsys, "backends", "--json")
    assert json.loads(out) == {
        "plugin_api": 1,
        "backends": [],
        "formats": {},
        "plugin_errors": {"ghost": "named in GPT_SIMPLE_PLUGINS but not installed"},
    }


@pytest.mark.parametrize(
    ("rows", "tokens", "message"),
    [
        ([0, 1], [[1]], "2 rows but 1 token lists"),
        ([0, 0], [[1], [2]], "distinct non-negative"),
        ([-1], [[1]], "distinct non-negative"),
        ([0, 1], [[1], []], "at least one new token"),
    ],
)
def test_forward_arguments_that_break_the_contract_are_named(rows, tokens, message) -> None:
    with pytest.raises(ValueError, match=message):
        LoadedModel.check_forward_arguments(rows, tokens)
    LoadedModel.check_forward_arguments([3, 0], [[1], [2, 3]])  # a valid call passes
