"""From a path as the user wrote it to a checked :class:`CheckpointInfo`.

Paths in the CLI, config files and JSONL records are all treated alike: ``~`` and
``$VAR``/``${VAR}`` are expanded (an unset variable is an error, not an empty string), relative
paths are relative to the working directory (as in the trainer), and symlinks are resolved so
two spellings of one checkpoint are one checkpoint. ``builtin:NAME`` names a model shipped
inside this package. Which format a path is in is decided by the format plugins.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gpt_simple_core.checkpoints.info import CheckpointInfo
from gpt_simple_core.errors import CheckpointError

if TYPE_CHECKING:
    from gpt_simple_core.registry import Registry

BUILTIN_PREFIX = "builtin:"
DEFAULT_MODEL = "builtin:default"
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def builtin_models_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "builtin_models"


def builtin_model_names() -> list[str]:
    folder = builtin_models_dir()
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def expand_variables(raw: str) -> str:
    """Expand ``$VAR`` and ``${VAR}``; an unset variable raises instead of vanishing."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name not in os.environ:
            raise CheckpointError(f"{raw}: environment variable {name} is not set")
        return os.environ[name]

    return _VARIABLE.sub(replace, raw)


def shown(raw: str, limit: int = 120) -> str:
    """``raw`` as messages quote it: control characters escaped, a long path shortened."""
    text = (
        raw.encode("unicode_escape", "backslashreplace").decode("ascii")
        if not raw.isprintable()
        else raw
    )
    return (
        text
        if len(text) <= limit
        else f"{text[: limit - 20]}...{text[-17:]} ({len(raw)} characters)"
    )


def _refuse_malformed(raw: str) -> None:
    """Paths no file can have, refused before the OS sees them (it would raise oddly)."""
    if not raw.strip():
        raise CheckpointError(
            f"{raw!r}: an empty path names no checkpoint (give its folder; '.' is the working "
            f"directory)"
        )
    if "\0" in raw:
        raise CheckpointError(f"{shown(raw)}: a path cannot contain a NUL byte")


def expand_path(raw: str, cwd: Path | None = None) -> Path:
    """The canonical absolute path ``raw`` names (it need not exist)."""
    _refuse_malformed(raw)
    if raw.startswith(BUILTIN_PREFIX):
        name = raw[len(BUILTIN_PREFIX) :]
        path = builtin_models_dir() / name
        if not name or "/" in name or not path.is_dir():
            available = ", ".join(BUILTIN_PREFIX + n for n in builtin_model_names()) or "none"
            raise CheckpointError(f"{shown(raw)}: no such built-in model (available: {available})")
        return path
    try:
        path = Path(expand_variables(raw)).expanduser()
    except RuntimeError as exc:  # ~user of a user that does not exist
        raise CheckpointError(f"{shown(raw)}: {exc} (a ~user that does not exist?)") from None
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    return Path(os.path.realpath(path))


def check_exists(path: Path, raw: str, what: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``path`` exists, saying precisely why not: no
    such file, a symbolic link loop, a name too long, permission denied."""
    try:
        os.stat(path)
    except FileNotFoundError:
        where = f" ({shown(str(path))})" if str(path) != raw else ""
        raise CheckpointError(f"{what}{shown(raw)}: no such file or directory{where}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "a symbolic link loop (the links point at each other)"
        else:
            reason = exc.strerror or str(exc)
        raise CheckpointError(f"{what}{shown(raw)}: {reason}") from None


def resolve_checkpoint(
    raw: str,
    registry: Registry,
    *,
    tokenizer: str | None = None,
    cwd: Path | None = None,
    load_tokenizer: bool = True,
) -> CheckpointInfo:
    """Resolve ``raw`` (checkpoint or run directory, or a file a plugin knows) and check it
    with the format plugins of ``registry``."""
    path = expand_path(raw, cwd)
    check_exists(path, raw)
    tokenizer_path = None
    if tokenizer is not None:
        tokenizer_path = expand_path(tokenizer, cwd)
        check_exists(tokenizer_path, tokenizer, "tokenizer ")
    info = registry.inspect_checkpoint(path, tokenizer_path, load_tokenizer=load_tokenizer)
    if info is None:
        known = "; ".join(f"{f.name}: {f.description}" for f in registry.formats.values())
        raise CheckpointError(
            f"{path} is not a checkpoint any installed format plugin recognises "
            f"({known or 'no format plugins are installed'})"
        )
    return info
