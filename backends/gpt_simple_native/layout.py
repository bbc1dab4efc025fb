"""Where HipGPT users point (spec section 4), resolved to one checkpoint file and a tokenizer.

Claimed, because each is unambiguously HipGPT's:

* a ``.bin`` file whose first 16 bytes read as four plausible dimensions (never a zip, which is
  what PyTorch's ``pytorch_model.bin`` is), or any file named ``gpt_checkpoint.bin``;
* a folder holding ``gpt_checkpoint.bin`` (the docs-era layout, tokenizer.json beside it);
* a run folder ``checkpoints/<run>/`` holding ``<run>_step<N>.bin`` files and usually the
  ``latest_checkpoint.bin`` symlink, which decides; without it the highest N wins.

Never claimed: gpt-simple checkpoints (``model/config.json``) and run directories, which the
core's own layout plugin owns. A HipGPT *project root* (whose ``checkpoints/`` holds run
folders) is refused with a message saying which folder to point at instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from gpt_simple.plugins import CheckpointError, TokenizerError
from gpt_simple_lm_format.layout import is_checkpoint_dir, is_run_dir
from gpt_simple_native.format import HEADER, MAX_DIM, MAX_VOCAB

DOCS_CHECKPOINT = "gpt_checkpoint.bin"
TOKENIZER = "tokenizer.json"
LATEST_LINK = "latest_checkpoint.bin"
STEP_FILE = re.compile(r"^(?P<run>.+)_step(?P<step>\d+)\.bin$")
ZIP_MAGIC = b"PK\x03\x04"


@attrs.frozen
class Located:
    """A checkpoint file chosen from what the user pointed at."""

    file: Path  # canonical: absolute, symlinks resolved
    step: int | None
    selected_because: str | None
    tokenizer_dirs: tuple[Path, ...]  # where tokenizer.json is looked for, in order
    warnings: tuple[str, ...] = ()


def step_of(path: Path) -> int | None:
    """N of a ``<run>_step<N>.bin`` file name, else None."""
    match = STEP_FILE.match(path.name)
    return int(match["step"]) if match else None


def looks_like_hipgpt(path: Path) -> bool:
    """Whether the first bytes of ``path`` read as a HipGPT header (not a zip, sane V/S/E/L)."""
    try:
        with path.open("rb") as f:
            head = f.read(HEADER.size)
    except OSError:
        return False
    if len(head) < HEADER.size or head.startswith(ZIP_MAGIC):
        return False
    V, S, E, L = HEADER.unpack(head)
    return 1 <= V <= MAX_VOCAB and all(1 <= n <= MAX_DIM for n in (S, E, L))


def _unique(paths: list[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(paths))


def _follow_link(link: Path) -> tuple[Path | None, str]:
    """Resolve a ``latest_checkpoint.bin`` symlink: (file or None, what it points to).

    HipGPT writes the link's target as ``checkpoints/<run>/<run>_step<N>.bin``, relative to the
    directory training ran in rather than to the link, so the link usually dangles when read
    normally; the file it names is then found by name inside the link's own folder.
    """
    target = os.readlink(link)
    for candidate in (link.parent / target, link.parent / Path(target).name):
        if candidate.is_file():
            return candidate.resolve(), target
    return None, target


def _is_run_folder(folder: Path) -> bool:
    if (folder / LATEST_LINK).is_symlink() or (folder / LATEST_LINK).is_file():
        return True
    return any(STEP_FILE.match(child.name) and child.is_file() for child in folder.iterdir())


def locate(path: Path) -> Located | None:
    """The HipGPT checkpoint ``path`` designates, or None when ``path`` is not HipGPT's.

    Raises :class:`CheckpointError` for HipGPT layouts that hold no usable checkpoint, and for
    a HipGPT project root.
    """
    if path.is_dir():
        return _locate_folder(path)
    if path.name == LATEST_LINK and path.is_symlink():
        return _locate_run_folder(path.parent)  # often dangling: resolve it as the folder would
    if path.is_file() and path.suffix == ".bin":
        if path.name != DOCS_CHECKPOINT and not looks_like_hipgpt(path):
            return None
        file = path.resolve()
        return Located(file, step_of(file), None, _unique([path.parent, file.parent]))
    return None


def _locate_folder(folder: Path) -> Located | None:
    if is_checkpoint_dir(folder) or is_run_dir(folder):
        return None  # gpt-simple's own layouts
    docs_checkpoint = folder / DOCS_CHECKPOINT
    if docs_checkpoint.is_file():
        file = docs_checkpoint.resolve()
        because = f"{DOCS_CHECKPOINT} in {folder} (HipGPT's default checkpoint name)"
        return Located(file, None, because, _unique([folder, file.parent]))
    if _is_run_folder(folder):
        return _locate_run_folder(folder)
    runs = folder / "checkpoints"
    if runs.is_dir():
        run_folders = sorted(c.name for c in runs.iterdir() if c.is_dir() and _is_run_folder(c))
        if run_folders:
            listed = ", ".join(f"checkpoints/{name}/" for name in run_folders)
            raise CheckpointError(
                f"{folder} looks like a HipGPT project root; point at checkpoints/<run>/ "
                f"instead (found {listed})"
            )
    return None


def _locate_run_folder(folder: Path) -> Located:
    """The checkpoint of a HipGPT run folder: the latest link's target, else the highest step."""
    warnings: list[str] = []
    link = folder / LATEST_LINK
    if link.is_symlink():
        file, target = _follow_link(link)
        if file is not None:
            because = f"{LATEST_LINK} in run folder {folder} points to {target}"
            return Located(file, step_of(file), because, _unique([folder, file.parent]))
        warnings.append(f"{link} points to {target}, which does not exist")
    elif link.is_file():  # a copy rather than a link (e.g. after an archive round trip)
        because = f"{LATEST_LINK} in run folder {folder} (a regular file: step unknown)"
        return Located(link.resolve(), None, because, (folder,))

    steps = [(n, c) for c in folder.iterdir() if (n := step_of(c)) is not None and c.is_file()]
    if not steps:
        detail = f": {warnings[0]}" if warnings else ""
        raise CheckpointError(f"HipGPT run folder {folder} has no <run>_step<N>.bin file{detail}")
    step, chosen = max(steps, key=lambda entry: (entry[0], entry[1].name))
    because = f"highest step ({step}) of {len(steps)} step checkpoints in run folder {folder}"
    because += f" ({warnings[0]})" if warnings else f" (no {LATEST_LINK})"
    return Located(chosen.resolve(), step, because, (folder,), tuple(warnings))


def find_tokenizer(located: Located, override: Path | None) -> Path:
    """The tokenizer file: the override (a file, or a folder holding tokenizer.json), else
    ``tokenizer.json`` beside the checkpoint."""
    if override is not None:
        file = override / TOKENIZER if override.is_dir() else override
        if not file.is_file():
            raise TokenizerError(f"tokenizer {file} (given explicitly) does not exist")
        return file
    tried = [folder / TOKENIZER for folder in located.tokenizer_dirs]
    for file in tried:
        if file.is_file():
            return file
    raise TokenizerError(
        f"no tokenizer for HipGPT checkpoint {located.file}: tried "
        f"{', '.join(str(p) for p in tried)} (pass the tokenizer explicitly)"
    )
