"""The on-disk cache of compiled kernels (cubins).

Entries live under `$ATTNPLAN_CACHE_DIR` or the user cache folder (platformdirs), one file per
key.  Each file carries a header with the SHA-256 of its body, so a truncated or corrupt entry is
detected and rebuilt.  Writes are atomic (temporary file + rename) and a per-key file lock keeps
several processes that compile the same kernel at once from duplicating work or racing; that
machinery lives in `disk_store`, shared with the autotune cache, and so does what happens when the
folder cannot be written (entries kept in memory, one warning) or another process holds a key's
lock for longer than `LOCK_TIMEOUT_S` (compiled in memory, not written).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import attrs
import platformdirs

from . import disk_store

_MAGIC = b"ATTNPLAN-CUBIN-1\n"
_SUFFIX = ".cubin"
LOCK_TIMEOUT_S = 120.0       # a compile takes seconds; this long a wait means a stuck process
STORE = disk_store.Store("kernel cache", "ATTNPLAN_CACHE_DIR", LOCK_TIMEOUT_S)


def cache_dir() -> Path:
    override = os.environ.get("ATTNPLAN_CACHE_DIR")
    path = Path(override) if override else Path(platformdirs.user_cache_dir("attnplan")) / "kernels"
    return disk_store.folder(path)


@attrs.frozen
class CacheEntry:
    path: Path
    name: str
    arch: str
    size: int


def _read(path: Path) -> Optional[bytes]:
    decoded = disk_store.read(path, _MAGIC)
    return decoded[1] if decoded else None


def get_or_build(key: str, meta: dict, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The cached body for `key`, building (and storing) it if absent or damaged.
    Returns (body, was_cached)."""
    return disk_store.get_or_make(STORE, cache_dir() / f"{key}{_SUFFIX}", _read, build,
                                  lambda body: disk_store.encode(body, meta, _MAGIC))


def entries() -> Iterator[CacheEntry]:
    for path, decoded in disk_store.scan(cache_dir(), _SUFFIX, _MAGIC):
        meta = decoded[0] if decoded else {"name": "(damaged)", "arch": "?"}
        yield CacheEntry(path, meta.get("name", "?"), meta.get("arch", "?"), path.stat().st_size)


def clear() -> int:
    """Remove every entry (and stale locks / temporaries); returns how many entries went."""
    return disk_store.clear(cache_dir(), _SUFFIX)
