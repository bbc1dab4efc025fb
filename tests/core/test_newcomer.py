"""What a newcomer meets first (issue 16): a warning the run must show, refusals at the door,
log flags where people put them, config files that say they were read, ``export`` that says
what it is doing and needs no ``--format``, log lines that never land on the progress line,
counts that read right, and a test command that installs nothing globally."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from gpt_simple.plugins import Exporter, hookimpl
from gpt_simple_core import logs
from gpt_simple_core.output.progress import Progress
from gpt_simple_core.plan.model import Plan, PlanGroup, PlanProblem
from gpt_simple_core.plan.render import render_text
from gpt_simple_core.wording import plural
from tests.conftest import REPO_ROOT
from tests.core.helpers import cli, write_jsonl
from tests.support import plugins


# Item 2: the warnings of a plan are shown by a real run, not only by --dry-run ---------------
def test_a_native_run_with_context_overflow_truncate_says_it_is_ignored(
    capsys: pytest.CaptureFixture[str], native_reference: Path
) -> None:
    from gpt_simple_native import plugin as native_plugin

    plugins.add_plugin(native_plugin)
    checkpoint = str(native_reference / "gpt_checkpoint.bin")
    argv = ["generate", "--checkpoint", checkpoint, "--prompt", "The", "--greedy"]
    code, out, err = cli(capsys, *argv, "--max-new-tokens", "2", "--context-overflow", "truncate")
    assert code == 0, err
    assert json.loads(out)["meta"]["backend"] == "native"
    assert "context_overflow=truncate is ignored" in err
    assert "always reads a fixed window" in err


# Item 3: a request the installed torch cannot run is refused before anything loads ----------
CPU_ONLY_TORCH = {"__version__": "2.13.0+cpu", "cuda": None, "hip": None}


@pytest.fixture
def cpu_only_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch backend as it is with a CPU-only torch wheel (none needed here: its
    pre-flight reads the build from torch's version file, which this pretends to be)."""
    from gpt_simple_torch import plugin as torch_plugin

    monkeypatch.setattr(torch_plugin, "torch_build", lambda: CPU_ONLY_TORCH)
    monkeypatch.setattr(torch_plugin.TorchBackend, "missing_dependencies", lambda self: [])
    plugins.add_plugin(torch_plugin)


@pytest.mark.parametrize(
    ("flags", "field", "message"),
    [
        (["--device", "cuda"], "--device", "torch 2.13.0+cpu is a CPU-only build"),
        (["--dtype", "fp16"], "model.dtype", "fp16 on the CPU"),
    ],
)
def test_what_a_cpu_only_torch_cannot_run_exits_2_at_pre_flight(
    capsys: pytest.CaptureFixture[str],
    cpu_only_torch: None,
    flags: list[str],
    field: str,
    message: str,
) -> None:
    code, out, err = cli(capsys, "generate", "--prompt", "The assert statement", *flags)
    assert code == 2, err
    assert out == ""
    assert "nothing was loaded" in err
    assert f"{field}: " in err and message in err
    assert "Traceback" not in err


# Item 8: --log-level and --log-format after the command --------------------------------------
def test_log_options_work_after_the_command(
    capsys: pytest.CaptureFixture[str], toy_ckpt: Path
) -> None:
    run = ["generate", "--checkpoint", str(toy_ckpt), "--prompt", "ab", "--max-new-tokens", "2"]
    code, out, err = cli(capsys, *run, "--log-format", "json", "--log-level", "debug")
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines()]
    assert {"debug", "info"} <= {line["level"] for line in lines}
    assert json.loads(out)["completion"] is not None
    code, _, err = cli(capsys, *run, "--log-level", "warning")
    assert code == 0 and "loading" not in err  # info lines are off
    # after the command wins over before it
    code, _, err = cli(capsys, "--log-level", "debug", *run, "--log-level", "error")
    assert code == 0 and err == ""


# Item 10: config files say that they were read ------------------------------------------------
PYPROJECT = """\
[project]
name = "someone-elses-project"

[tool.gpt-simple.generation]
max_new_tokens = 3
temperature = 0.5
"""


def test_a_pyproject_table_is_announced_and_shown_in_the_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toy_ckpt: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "ab"}])
    dry_run = ["batch-generate", "--input", str(source), "--checkpoint", str(toy_ckpt)]
    dry_run.append("--dry-run")
    code, out, err = cli(capsys, *dry_run)
    assert code == 0 and "config file" not in out + err  # nothing read, nothing said
    code, out, _ = cli(capsys, *dry_run, "--plan-format", "json")
    assert json.loads(out)["config_files"] == []

    pyproject = tmp_path / "pyproject.toml"  # the working directory of the test
    pyproject.write_text(PYPROJECT, encoding="utf-8")
    code, out, err = cli(capsys, *dry_run)
    assert code == 0
    assert f"config file: {pyproject} [tool.gpt-simple]" in out.splitlines()[1]
    assert "config file read" in err and "generation.max_new_tokens" in err
    assert "token budget 3" in out  # and it did change the plan
    code, out, _ = cli(capsys, *dry_run, "--plan-format", "json")
    assert json.loads(out)["config_files"] == [str(pyproject)]
    # a real run says it too (at info level, on stderr)
    code, out, err = cli(capsys, "generate", "--checkpoint", str(toy_ckpt), "--prompt", "ab")
    assert code == 0 and "config file read" in err and str(pyproject) in err
    assert json.loads(out)["generation"]["max_new_tokens"] == 3


def test_an_explicit_config_file_is_shown_in_the_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toy_ckpt: Path
) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text("[generation]\nseed = 3\n", encoding="utf-8")
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "ab"}])
    argv = ["batch-generate", "--input", str(source), "--checkpoint", str(toy_ckpt), "--dry-run"]
    code, out, _ = cli(capsys, *argv, "--config", str(config), "--plan-format", "json")
    assert code == 0 and json.loads(out)["config_files"] == [str(config)]


# Item 12: export needs no --format when one exporter is installed ----------------------------
class FakeExporter(Exporter):
    formats = ("toy",)
    calls: list[tuple[str, Path]] = []

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]

    def export(self, checkpoint: Any, out: Path, options: Any) -> dict[str, Any]:
        FakeExporter.calls.append((self.name, out))
        out.mkdir(parents=True)
        return {"out": str(out), "format": self.name}


class ExportersPlugin:
    GPT_SIMPLE_PLUGIN_API = 1

    def __init__(self, *names: str) -> None:
        self.names = names
        self.__name__ = "exporters-" + "-".join(names)

    @hookimpl
    def gpt_simple_register_exporters(self, register: Any) -> None:
        for name in self.names:
            register(FakeExporter(name))


def test_export_uses_the_one_installed_exporter_without_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toy_ckpt: Path
) -> None:
    FakeExporter.calls.clear()
    plugins.add_plugin(ExportersPlugin("fake"))
    out_dir = tmp_path / "exported"
    code, out, err = cli(capsys, "export", str(toy_ckpt), "--out", str(out_dir))
    assert code == 0, err
    assert json.loads(out) == {"out": str(out_dir), "format": "fake"}
    assert FakeExporter.calls == [("fake", out_dir)]
    assert "the one exporter installed" in err and "exporting" in err


def test_export_asks_for_format_when_several_exporters_are_installed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toy_ckpt: Path
) -> None:
    FakeExporter.calls.clear()
    plugins.add_plugin(ExportersPlugin("onnx-like", "gguf-like"))
    code, out, err = cli(capsys, "export", str(toy_ckpt), "--out", str(tmp_path / "x"))
    assert code == 2 and out == ""
    assert "--format is needed: several exporters are installed (gguf-like, onnx-like)" in err
    assert FakeExporter.calls == []


# Item 13: a log line never lands on the live progress line -----------------------------------
class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def screen(written: str) -> list[str]:
    """The lines a terminal shows after ``written``: ``\\r`` returns to the line's start,
    ``ESC[K`` erases to its end, other escape sequences (colours) show nothing."""
    lines, column = [""], 0
    for part in re.split(r"(\r|\n|\x1b\[[0-9;]*[A-Za-z])", written):
        if part == "\r":
            column = 0
        elif part == "\n":
            lines.append("")
            column = 0
        elif part == "\x1b[K":
            lines[-1] = lines[-1][:column]
        elif part.startswith("\x1b["):
            continue
        elif part:
            line = lines[-1]
            lines[-1] = line[:column] + part + line[column + len(part) :]
            column += len(part)
    return lines


def test_a_log_line_is_printed_above_the_live_progress_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure()
    progress = Progress(2)  # on a terminal: a live line
    assert progress.live
    progress.record_done()
    structlog.get_logger("test").warning("disk almost full")
    progress.record_done()
    progress.close()
    shown = screen(terminal.getvalue())
    assert shown[-1] == ""  # the progress line ends with its newline
    (log_line,) = [line for line in shown if "disk almost full" in line]
    assert "records" not in log_line  # not printed onto the progress line
    assert shown.index(log_line) == 0
    assert shown[1].startswith("2/2 records | ")  # the progress line, redrawn below it
    assert len(shown) == 3


# Item 14: counts read right ------------------------------------------------------------------
def test_counted_nouns_agree_with_their_count() -> None:
    assert [plural(n, "record") for n in (0, 1, 2)] == ["0 records", "1 record", "2 records"]
    problem = PlanProblem(file="in.jsonl", line=3, field="model", message="no model", count=2)
    assert problem.render() == "in.jsonl:3: model: no model (and 1 more record)"
    assert attrs_evolve(problem, count=3).render().endswith("(and 2 more records)")
    one = Plan(input="in.jsonl", records=1, groups=(PlanGroup(checkpoint="c", format="f"),))
    assert render_text(one).startswith("Plan for in.jsonl: 1 record in 1 group (one model load")
    assert "1 problem:" in render_text(attrs_evolve(one, problems=(problem,)))
    progress = Progress(1, enabled=False)
    progress.done = 1
    assert progress.line().startswith("1/1 record | ")


def attrs_evolve(instance: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(instance, **changes)


# Item 15: the test command installs nothing into the system Python ---------------------------
def test_the_ci_runs_exactly_the_readme_test_command_in_a_virtualenv() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("**Run the test suite**", 1)[1]
    command = section.split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in ci.splitlines() if line and not line.startswith(("#", "set "))]
    assert commands[-1] == command
    assert command.startswith("python3 -m venv .venv-nox && .venv-nox/bin/pip install nox==")
    assert "python3 -m pip install" not in readme  # nothing into the interpreter itself
    ignored = (REPO_ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".venv-*/" in ignored


def test_the_quickstart_says_to_activate_the_virtualenv_before_bare_commands() -> None:
    quickstart = (REPO_ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    activate = quickstart.find("source .venv/bin/activate")
    assert 0 <= activate < quickstart.find("gpt-simple generate")
