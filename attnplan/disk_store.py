"""What the on-disk caches (compiled kernels, autotune results) share: one file per key, made safe.

A file is `magic + JSON header + "\\n" + body`; the header carries the SHA-256 of the body, so a
truncated, partly written or bit-flipped file reads as absent instead of as wrong data.  Writes go
to a temporary file that is fsynced and renamed over the target, so a reader sees the old file or
the new one, never half of one.  A per-key file lock lets several processes that miss the same key
at once make it once: the others wait, then read what the first one wrote.

A cache must never stop the work it only speeds up.  Files and locks get the permissions the umask
gives (a cache folder can be shared between users).  A folder that cannot be written (read-only,
a file, under a read-only parent) keeps its entries in this process's memory instead, with one
`CacheWarning` naming the folder and the fix; a lock that another process holds longer than the
store's wait is given up on (one warning naming the lock file): the value is made in memory and
not written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import attrs
import filelock

from .errors import CacheWarning, InvalidOption

T = TypeVar("T")

_LOCK_SUFFIX = ".lock"
_TEMP_SUFFIX = ".tmp"
LOCK_TIMEOUT_ENV = "ATTNPLAN_CACHE_LOCK_TIMEOUT"

# Entries of folders that could not be written, by path: this process's only copy.
_memory: dict[Path, bytes] = {}
_warned: set = set()                 # folders and lock files already warned about
_warned_lock = threading.Lock()


@attrs.frozen
class Store:
    """What a cache is called in its warnings, the variable that moves its folder, and how long a
    miss waits for another process that is making the same entry."""

    name: str                        # "kernel cache"
    folder_variable: str             # "ATTNPLAN_CACHE_DIR"
    lock_timeout_s: float            # the default wait; $ATTNPLAN_CACHE_LOCK_TIMEOUT overrides it

    def lock_timeout(self) -> float:
        text = os.environ.get(LOCK_TIMEOUT_ENV)
        if text is None or text == "":
            return self.lock_timeout_s
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:        # also NaN
            raise InvalidOption(LOCK_TIMEOUT_ENV, text, "seconds to wait for another process's cache lock (>= 0)")
        return seconds


def _warn_once(key, message: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    # Attributed to the first caller outside attnplan: the line that asked for a plan or a kernel.
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("attnplan"):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, CacheWarning, stacklevel=level)


def _file_mode() -> int:
    """0o666 less the umask: what the user's other new files get."""
    try:
        with open("/proc/self/status") as status:       # reads the umask without changing it (Linux)
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)                             # elsewhere: set it and put it back
    os.umask(umask)
    return 0o666 & ~umask


def _unusable(store: Store, directory: Path, exc: OSError) -> None:
    # mkdir says "File exists" when the path (or a parent) is a file.
    why = ("a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError))
           else exc.strerror or type(exc).__name__)
    _warn_once(directory, f"attnplan's {store.name} folder {directory} cannot be used "
                          f"({why}); its entries are kept in memory for this "
                          f"process only. Fix: make {directory} a folder you can write, or set "
                          f"{store.folder_variable} to one.")


def folder(path: Path) -> Path:
    """`path`, made if it can be: one that cannot is reported (once) when an entry is to be written."""
    with contextlib.suppress(OSError):
        path.mkdir(parents=True, exist_ok=True)
    return path


def writable_folder(store: Store, directory: Path) -> bool:
    """Whether `directory` is (now made) a folder this process can write in; warns once when not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory))
    except OSError as exc:          # FileExistsError: a file; PermissionError: read-only (or its parent)
        _unusable(store, directory, exc)
        return False
    return True


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
    """decode() of the entry at `path` (this process's in-memory copy first); None also when it
    is missing or unreadable."""
    blob = _memory.get(path)
    if blob is not None:
        return decode(blob, magic)
    try:
        return decode(path.read_bytes(), magic)
    except OSError:
        return None


def write_atomic(path: Path, blob: bytes) -> None:
    """Replace `path` with `blob` all at once; on any failure the temporary file is removed."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=_TEMP_SUFFIX)
    try:
        os.fchmod(fd, _file_mode())             # mkstemp makes 0600: other users could not read the entry
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _keep(store: Store, path: Path, blob: bytes) -> None:
    """Store `blob` at `path`, or in memory when the folder turns out not to take it."""
    try:
        write_atomic(path, blob)
    except OSError as exc:
        _unusable(store, path.parent, exc)
        _memory[path] = blob
    else:
        _memory.pop(path, None)


def _held_lock(store: Store, path: Path) -> Optional[filelock.BaseFileLock]:
    """The key's lock, acquired; None when it cannot be had (a folder that refuses it warns; another
    process holding it past the store's wait warns once, naming the lock file)."""
    # filelock wants the owner to keep read and write; the rest as the umask says (and not 0644 always).
    lock = filelock.FileLock(str(path) + _LOCK_SUFFIX, mode=_file_mode() | 0o600)
    timeout = store.lock_timeout()
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            _warn_once(lock.lock_file, f"attnplan's {store.name}: {lock.lock_file} is held by another process "
                                       f"(or thread) making the same entry; waiting up to {timeout:g} s for it "
                                       f"({LOCK_TIMEOUT_ENV} sets the wait), then making the entry in memory "
                                       "without storing it. If no attnplan process is running, delete the lock file.")
            lock.acquire(timeout=timeout)
    except filelock.Timeout:
        return None
    except OSError as exc:
        _unusable(store, path.parent, exc)
        return None
    return lock


def get_or_make(store: Store, path: Path, load: Callable[[Path], Optional[T]], make: Callable[[], T],
                serialize: Callable[[T], bytes]) -> tuple[T, bool]:
    """load(path), else make() and store serialize(value) there.  Returns (value, was_cached).

    `load` returns None for anything it will not use (missing, damaged, stale, unaccepted); that
    is then made again and overwritten.  The miss is re-checked under the key's lock because
    another process may have made the value while this one waited for the lock.  Where the folder
    cannot be written the value is kept in memory; where the lock is not had within the store's
    wait (another process holds it) the value is made and kept in memory, not written."""
    value = load(path)
    if value is not None:
        return value, True
    if not writable_folder(store, path.parent):
        value = make()
        _memory[path] = serialize(value)
        return value, False
    lock = _held_lock(store, path)
    if lock is None:
        value = make()
        _memory[path] = serialize(value)
        return value, False
    try:
        value = load(path)
        if value is not None:
            return value, True
        value = make()
        _keep(store, path, serialize(value))
        return value, False
    finally:
        lock.release()


def scan(directory: Path, suffix: str, magic: bytes) -> Iterator[tuple[Path, Optional[tuple[dict, bytes]]]]:
    """Every file named `*suffix` in `directory`, in name order, with its decode() (None: damaged)."""
    for path in sorted(directory.glob(f"*{suffix}")):
        yield path, read(path, magic)


def clear(directory: Path, suffix: str) -> int:
    """Remove every `*suffix` file and any leftover lock or temporary (and this process's in-memory
    entries of the folder); returns how many entries went."""
    for path in [p for p in _memory if p.parent == directory]:
        del _memory[path]
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.iterdir():
        if path.suffix in (suffix, _LOCK_SUFFIX, _TEMP_SUFFIX):
            path.unlink(missing_ok=True)
            removed += path.suffix == suffix
    return removed
