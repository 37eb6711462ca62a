"""The on-disk cache of compiled kernels (cubins).

Entries live under `$ATTNPLAN_CACHE_DIR` or the user cache folder (platformdirs), one file per
key.  Each file carries a header with the SHA-256 of its body, so a truncated or corrupt entry is
detected and rebuilt.  Writes are atomic (temporary file + rename) and a per-key file lock keeps
several processes that compile the same kernel at once from duplicating work or racing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import attrs
import filelock
import platformdirs

_MAGIC = b"ATTNPLAN-CUBIN-1\n"
_SUFFIX = ".cubin"


def cache_dir() -> Path:
    override = os.environ.get("ATTNPLAN_CACHE_DIR")
    path = Path(override) if override else Path(platformdirs.user_cache_dir("attnplan")) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


@attrs.frozen
class CacheEntry:
    path: Path
    name: str
    arch: str
    size: int


def _encode(body: bytes, meta: dict) -> bytes:
    header = json.dumps({**meta, "sha256": hashlib.sha256(body).hexdigest()}, sort_keys=True).encode()
    return _MAGIC + header + b"\n" + body


def _decode(blob: bytes) -> Optional[tuple[dict, bytes]]:
    """(meta, body), or None if the entry is damaged."""
    if not blob.startswith(_MAGIC):
        return None
    header, sep, body = blob[len(_MAGIC):].partition(b"\n")
    if not sep:
        return None
    try:
        meta = json.loads(header)
    except ValueError:
        return None
    if meta.get("sha256") != hashlib.sha256(body).hexdigest():
        return None
    return meta, body


def _read(path: Path) -> Optional[bytes]:
    try:
        decoded = _decode(path.read_bytes())
    except OSError:
        return None
    return decoded[1] if decoded else None


def _write_atomic(path: Path, blob: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def get_or_build(key: str, meta: dict, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The cached body for `key`, building (and storing) it if absent or damaged.
    Returns (body, was_cached)."""
    path = cache_dir() / f"{key}{_SUFFIX}"
    body = _read(path)
    if body is not None:
        return body, True
    with filelock.FileLock(str(path) + ".lock"):
        body = _read(path)          # another process may have built it while we waited
        if body is not None:
            return body, True
        body = build()
        _write_atomic(path, _encode(body, meta))
        return body, False


def entries() -> Iterator[CacheEntry]:
    for path in sorted(cache_dir().glob(f"*{_SUFFIX}")):
        try:
            decoded = _decode(path.read_bytes())
        except OSError:
            decoded = None
        meta = decoded[0] if decoded else {"name": "(damaged)", "arch": "?"}
        yield CacheEntry(path, meta.get("name", "?"), meta.get("arch", "?"), path.stat().st_size)


def clear() -> int:
    """Remove every entry (and stale locks / temporaries); returns how many entries went."""
    removed = 0
    for path in cache_dir().iterdir():
        if path.suffix in (_SUFFIX, ".lock", ".tmp") or path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            removed += path.suffix == _SUFFIX
    return removed
