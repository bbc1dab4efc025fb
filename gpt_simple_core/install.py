"""What to tell a user to install: a command that works where they are.

From a source checkout of gpt-simple (an editable install, with ``constraints.txt`` beside
``pyproject.toml``) the command installs the extra from the checkout with the constraints, so
torch comes from the pinned CPU wheel rather than a download of CUDA packages; anywhere else
it is a plain ``pip install`` of the distribution.
"""

from __future__ import annotations

from pathlib import Path

CORE_DISTRIBUTION = "gpt-simple-inference"


def source_checkout() -> Path | None:
    """The root of the source checkout this core runs from, or ``None`` (an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "constraints.txt").is_file():
        return root
    return None


def install_command(distribution: str, extra: str | None = None) -> str:
    """``pip install ...`` for ``distribution`` (with ``extra``), as the user should type it."""
    root = source_checkout() if distribution == CORE_DISTRIBUTION else None
    if root is not None:
        target = f"'.[{extra}]'" if extra else "."
        return f"pip install -c constraints.txt {target} (from {root})"
    return f"pip install '{distribution}[{extra}]'" if extra else f"pip install {distribution}"
