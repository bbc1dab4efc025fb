"""Test sessions: ``python3 -m nox`` runs them all (what CI runs); ``-s NAME`` runs one.

Every install goes through ``constraints.txt``, which pins torch to the local CPU wheel: a bare
``torch`` requirement in a fresh virtualenv would download GBs of CUDA packages. The
virtualenv backend is used on purpose (uv does not see the local torch wheel).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["lint", "tests", "native", "torch", "onnx", "plugin_template", "docs"]
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
