"""The on-disk cache of compiled kernels (cubins).

Entries live under `$ATTNPLAN_CACHE_DIR` or the user cache folder (platformdirs), one file per
key.  Each file carries a header with the SHA-256 of its body, so a truncated or corrupt entry is
detected and rebuilt.  Writes are atomic (temporary file + rename) and a per-key file lock keeps
several processes that compile the same kernel at once from duplicating work or racing; that
machinery lives in `disk_store`, shared with the autotune cache.
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


def _read(path: Path) -> Optional[bytes]:
    decoded = disk_store.read(path, _MAGIC)
    return decoded[1] if decoded else None


def get_or_build(key: str, meta: dict, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The cached body for `key`, building (and storing) it if absent or damaged.
    Returns (body, was_cached)."""
    return disk_store.get_or_make(cache_dir() / f"{key}{_SUFFIX}", _read, build,
                                  lambda body: disk_store.encode(body, meta, _MAGIC))


def entries() -> Iterator[CacheEntry]:
    for path, decoded in disk_store.scan(cache_dir(), _SUFFIX, _MAGIC):
        meta = decoded[0] if decoded else {"name": "(damaged)", "arch": "?"}
        yield CacheEntry(path, meta.get("name", "?"), meta.get("arch", "?"), path.stat().st_size)


def clear() -> int:
    """Remove every entry (and stale locks / temporaries); returns how many entries went."""
    return disk_store.clear(cache_dir(), _SUFFIX)
