"""Exports made on demand (``--backend onnx`` on a gpt-simple checkpoint), cached on disk.

Layout under ``$GPT_SIMPLE_CACHE`` (default ``$XDG_CACHE_HOME/gpt-simple``, else
``~/.cache/gpt-simple``)::

    content-hashes.json                  path -> {size, mtime_ns, sha256} of hashed files
    onnx/<sha256[:16]>-<dtype>[-int8]-opset<N>-<versions[:8]>/   one export folder per key
    onnx/.tmp-<key>-<random>/            an export in progress (or killed)

The key is the weights' content hash (so a moved or copied checkpoint hits the same entry and
retraining into the same path misses it), the dtype, the quantisation, the opset, and the
versions of gpt-simple and of the exporting and running tools (torch, onnx, onnxscript,
onnxruntime), so upgrading any of them re-exports. An environment that can only run exports
(no torch) accepts an entry made by other tool versions for the same weights, dtype,
quantisation and opset rather than failing.

Hashing a multi-GB file takes seconds, so a file's hash is computed once and remembered by
(path, size, mtime_ns) in ``content-hashes.json``.

Concurrency: an export is written into a private temp dir inside ``onnx/`` and renamed to its
final name in one atomic step, so an entry either does not exist or is complete. Two runs
racing to export the same key both finish; the second rename fails and that run uses the
winner's entry. A killed export leaves only its temp dir, which lookups ignore and later
exports delete once its owner process is gone (or after a day, for owners on other hosts).
The hash index is rewritten by atomic rename too; a lost concurrent update only costs a
re-hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from gpt_simple_onnx import layout
from gpt_simple_onnx.versions import tool_versions

CACHE_ENV = "GPT_SIMPLE_CACHE"
HASH_INDEX = "content-hashes.json"
SUBDIR = "onnx"
TEMP_PREFIX = ".tmp-"
OWNER_FILE = ".owner.json"
#: A temp dir whose owner cannot be checked (another host) is stale after this long.
STALE_SECONDS = 24 * 3600
_CHUNK = 1 << 20


def cache_root() -> Path:
    """``$GPT_SIMPLE_CACHE``, else ``$XDG_CACHE_HOME/gpt-simple``, else ``~/.cache/gpt-simple``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpt-simple"


# Content hashes ----------------------------------------------------------------------------
def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _umask_mode(mode: int) -> int:
    """``mode`` as the umask lets files be created: mkstemp/mkdtemp make private (0600/0700)
    files, which would make a cache shared by a group unusable to the others."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temp, _umask_mode(0o666))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def content_hash(path: Path, root: Path | None = None) -> str:
    """sha256 of ``path``'s bytes, remembered by (path, size, mtime_ns) in the cache's index."""
    path = path.resolve()
    index_path = (root or cache_root()) / HASH_INDEX
    stat = path.stat()
    known = _read_index(index_path).get(str(path))
    if (
        isinstance(known, dict)
        and known.get("size") == stat.st_size
        and known.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(known.get("sha256"), str)
    ):
        return known["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    index = _read_index(index_path)  # re-read: another run may have added entries meanwhile
    index[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
    with contextlib.suppress(OSError):  # a read-only cache only costs hashing again next time
        _write_atomically(index_path, json.dumps(index, indent=1, sort_keys=True))
    return value


# Keys ------------------------------------------------------------------------------------
@attrs.frozen
class CacheKey:
    """What identifies an export: weights content, dtype, quantisation, opset, tool versions."""

    sha256: str
    dtype: str
    quantization: str | None
    opset: int
    versions: Mapping[str, str | None]

    @property
    def prefix(self) -> str:
        """The version-independent part of :attr:`name`."""
        quant = f"-{self.quantization}" if self.quantization else ""
        return f"{self.sha256[:16]}-{self.dtype}{quant}-opset{self.opset}"

    @property
    def name(self) -> str:
        versions = json.dumps(dict(self.versions), sort_keys=True).encode()
        return f"{self.prefix}-{hashlib.sha256(versions).hexdigest()[:8]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "opset": self.opset,
            "versions": dict(self.versions),
        }


def key_for(
    weights: Path,
    *,
    dtype: str,
    quantization: str | None = None,
    opset: int = layout.DEFAULT_OPSET,
    root: Path | None = None,
) -> CacheKey:
    """The key of exporting ``weights`` so, with the tools installed now."""
    return CacheKey(
        sha256=content_hash(weights, root),
        dtype=dtype,
        quantization=quantization,
        opset=opset,
        versions=tool_versions(),
    )


def is_entry_for(folder: Path, key: CacheKey) -> bool:
    """Whether ``folder`` is a complete export made for ``key``'s weights, dtype,
    quantisation and opset (versions aside)."""
    try:
        manifest = layout.read_manifest(folder)
    except Exception:  # a damaged entry is simply not a hit
        return False
    if manifest is None or not (folder / layout.MODEL_FILE).is_file():
        return False
    recorded = manifest.raw.get("cache_key") or {}
    return all(
        recorded.get(field) == value
        for field, value in key.as_dict().items()
        if field != "versions"
    )


@attrs.frozen
class ONNXCache:
    """The ONNX exports under ``root`` (default :func:`cache_root`)."""

    root: Path = attrs.field(factory=cache_root)

    @property
    def folder(self) -> Path:
        return self.root / SUBDIR

    def entry(self, key: CacheKey) -> Path:
        """Where the export for ``key`` lives (or would)."""
        return self.folder / key.name

    def find(self, key: CacheKey, *, any_versions: bool = False) -> Path | None:
        """A complete export for ``key``; with ``any_versions``, one made by other tool
        versions is accepted too (the newest)."""
        exact = self.entry(key)
        if is_entry_for(exact, key):
            return exact
        if not any_versions or not self.folder.is_dir():
            return None
        others = [p for p in self.folder.glob(key.prefix + "-*") if is_entry_for(p, key)]
        return max(others, key=lambda p: p.stat().st_mtime_ns, default=None)

    def export(self, key: CacheKey, write: Callable[[Path], object]) -> Path:
        """Run ``write(temp_dir)`` and move its result into place as the entry for ``key``.

        If another run installed the entry first, ours is discarded and theirs returned.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temps()
        temp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f"{TEMP_PREFIX}{key.name}-"))
        try:
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            (temp / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
            write(temp)
            (temp / OWNER_FILE).unlink()
            temp.chmod(_umask_mode(0o777))
            final = self.entry(key)
            try:
                os.rename(temp, final)  # atomic; fails if the entry exists
            except OSError:
                if not is_entry_for(final, key):
                    raise
                shutil.rmtree(temp, ignore_errors=True)  # another run won the race
            return final
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def discard(self, entry: Path) -> None:
        """Remove a damaged entry: renamed out of the way first (one atomic step, so no run
        finds it half deleted), then deleted."""
        grave = self.folder / f"{TEMP_PREFIX}damaged-{entry.name}-{os.getpid()}"
        try:
            os.rename(entry, grave)
        except FileNotFoundError:
            return  # another run discarded it already
        shutil.rmtree(grave, ignore_errors=True)

    def remove_stale_temps(self) -> list[Path]:
        """Delete temp dirs of exports whose process is gone; return them."""
        removed = []
        if not self.folder.is_dir():
            return removed
        for temp in self.folder.glob(TEMP_PREFIX + "*"):
            if temp.is_dir() and _is_stale(temp):
                shutil.rmtree(temp, ignore_errors=True)
                removed.append(temp)
        return removed


def _is_stale(temp: Path) -> bool:
    try:
        age = time.time() - temp.stat().st_mtime
    except OSError:
        return False  # gone already
    try:
        owner = json.loads((temp / OWNER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        # no owner file: killed before writing it, or finishing right now (owner removed
        # just before the rename); only old ones are certainly dead
        return age > 3600
    except (OSError, ValueError):
        return True
    if owner.get("host") != socket.gethostname():
        return age > STALE_SECONDS
    return not _process_alive(int(owner.get("pid", -1)))


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
