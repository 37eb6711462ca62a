"""What the on-disk caches (compiled kernels, autotune results) share: one file per key, made safe.

A file is `magic + JSON header + "\\n" + body`; the header carries the SHA-256 of the body, so a
truncated, partly written or bit-flipped file reads as absent instead of as wrong data.  Writes go
to a temporary file that is fsynced and renamed over the target, so a reader sees the old file or
the new one, never half of one.  A per-key file lock lets several processes that miss the same key
at once make it once: the others wait, then read what the first one wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import filelock

T = TypeVar("T")

_LOCK_SUFFIX = ".lock"
_TEMP_SUFFIX = ".tmp"


def encode(body: bytes, meta: dict, magic: bytes) -> bytes:
    """`body` framed with `magic` and a header of `meta` plus the body's checksum."""
    header = json.dumps({**meta, "sha256": hashlib.sha256(body).hexdigest()}, sort_keys=True).encode()
    return magic + header + b"\n" + body


def decode(blob: bytes, magic: bytes) -> Optional[tuple[dict, bytes]]:
    """(meta, body), or None if `blob` is not an intact file of this kind."""
    if not blob.startswith(magic):
        return None
    header, sep, body = blob[len(magic):].partition(b"\n")
    if not sep:
        return None
    try:
        meta = json.loads(header)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(body).hexdigest():
        return None
    return meta, body


def read(path: Path, magic: bytes) -> Optional[tuple[dict, bytes]]:
    """decode() of the file at `path`; None also when it is missing or unreadable."""
    try:
        return decode(path.read_bytes(), magic)
    except OSError:
        return None


def write_atomic(path: Path, blob: bytes) -> None:
    """Replace `path` with `blob` all at once; on any failure the temporary file is removed."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def get_or_make(path: Path, load: Callable[[Path], Optional[T]], make: Callable[[], T],
                serialize: Callable[[T], bytes]) -> tuple[T, bool]:
    """load(path), else make() and store serialize(value) there.  Returns (value, was_cached).

    `load` returns None for anything it will not use (missing, damaged, stale, unaccepted); that
    is then made again and overwritten.  The miss is re-checked under the key's lock because
    another process may have made the value while this one waited for the lock."""
    value = load(path)
    if value is not None:
        return value, True
    with filelock.FileLock(str(path) + _LOCK_SUFFIX):
        value = load(path)
        if value is not None:
            return value, True
        value = make()
        write_atomic(path, serialize(value))
        return value, False


def scan(directory: Path, suffix: str, magic: bytes) -> Iterator[tuple[Path, Optional[tuple[dict, bytes]]]]:
    """Every file named `*suffix` in `directory`, in name order, with its decode() (None: damaged)."""
    for path in sorted(directory.glob(f"*{suffix}")):
        yield path, read(path, magic)


def clear(directory: Path, suffix: str) -> int:
    """Remove every `*suffix` file and any leftover lock or temporary; returns how many entries went."""
    removed = 0
    for path in directory.iterdir():
        if path.suffix in (suffix, _LOCK_SUFFIX, _TEMP_SUFFIX):
            path.unlink(missing_ok=True)
            removed += path.suffix == suffix
    return removed
