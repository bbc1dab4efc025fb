"""Test sessions: ``.venv-nox/bin/nox`` runs them all (what CI runs; the README's test
command puts nox in that virtualenv); ``-s NAME`` runs one.

Every install goes through ``constraints.txt``, which pins torch to the local CPU wheel: a bare
``torch`` requirement in a fresh virtualenv would download GBs of CUDA packages. The
virtualenv backend is used on purpose (uv does not see the local torch wheel).
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = [
    "lint", "tests", "native", "torch", "onnx", "plugin_template", "ray", "lm_eval", "docs",
    "compat",
]  # fmt: skip
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")
RUFF = "ruff==0.17.6"
PYTEST_NO_TESTS = 5


def run_pytest(session: nox.Session, *args: str) -> None:
    """pytest, where "no tests collected" (exit 5) fails loudly instead of passing quietly."""
    code = session.run("pytest", *args, *session.posargs, success_codes=[0, PYTEST_NO_TESTS])
    if code == PYTEST_NO_TESTS:
        session.error(f"pytest collected no tests from {' '.join(args)}: the suite is broken")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The core, without any heavy runtime installed (proves planning never needs torch)."""
    session.install(*CONSTRAINTS, ".[test]")
    session.run(
        "python",
        "-c",
        "import importlib.util, sys; "
        "sys.exit('torch must not be installed here' if importlib.util.find_spec('torch') else 0)",
    )
    run_pytest(session, "tests/core")


@nox.session(python=PYTHON)
def native(session: nox.Session) -> None:
    """The native HipGPT backend: numpy only."""
    session.install(*CONSTRAINTS, ".[test]")
    run_pytest(session, "tests/native")


@nox.session(python=PYTHON)
def torch(session: nox.Session) -> None:
    """The PyTorch backend against transformers and reference forwards (CPU)."""
    session.install(*CONSTRAINTS, ".[torch,test-torch]")
    run_pytest(session, "tests/torch")


@nox.session(python=PYTHON)
def onnx(session: nox.Session) -> None:
    """The ONNX Runtime backend and exporter against the PyTorch backend (CPU).

    No transformers here (the ``test`` extra, not ``test-torch``): the onnx suite's reference
    is the torch backend, which the torch session checks against transformers.
    """
    session.install(*CONSTRAINTS, ".[onnx,export,test]")
    run_pytest(session, "tests/onnx")


@nox.session(python=PYTHON)
def plugin_template(session: nox.Session) -> None:
    """The third-party plugin template, installed into a fresh virtualenv and used."""
    session.install(*CONSTRAINTS, ".[test]")
    run_pytest(session, "tests/plugin_template")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation builds without warnings."""
    session.install(*CONSTRAINTS, ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", f"{session.create_tmp()}/site")


@nox.session(python=PYTHON)
def ray(session: nox.Session) -> None:
    """The Ray executor on a local Ray cluster the tests start on loopback and stop again."""
    session.install(*CONSTRAINTS, ".[ray,test]")
    run_pytest(session, "tests/ray")


@nox.session(python=PYTHON)
def lm_eval(session: nox.Session) -> None:
    """lm-evaluation-harness with our model, on tasks the tests define over local files
    (offline: no hub, no dataset download)."""
    session.install(*CONSTRAINTS, ".[torch,lm-eval,test]")
    run_pytest(session, "tests/lm_eval")


@nox.session(python=PYTHON)
def compat(session: nox.Session) -> None:
    """Our PyTorch backend against the trainer's own generation (gpt-simple-lm 0.1.2).

    This virtualenv holds ours; the tests build the trainer's in a second one (both install the
    import package ``gpt_simple``), kept in nox's cache folder and reused until its requirements
    change. They train two tiny models with the trainer's CLI and compare greedy text and
    logits. See "Trainer compatibility" in docs/backends.md.
    """
    session.install(*CONSTRAINTS, ".[torch,test]")
    session.env["GPT_SIMPLE_COMPAT"] = "1"
    session.env["GPT_SIMPLE_COMPAT_CACHE"] = os.path.join(session.cache_dir, "compat")
    # Its own basetemp: pytest's shared /tmp/pytest-of-USER keeps only the last 3 runs of
    # anyone's, and the printed summary points at the run's files for inspection.
    basetemp = os.path.join(session.create_tmp(), "pytest")
    run_pytest(session, "--basetemp", basetemp, "-m", "compat", "tests/compat")
