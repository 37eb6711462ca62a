"""The on-disk autotune cache: which backend won the timing race for one problem on one machine.

Timing every candidate backend costs far more than planning, so the planner measures a problem
once and keeps the verdict here, one file per `TuningKey`.  The key holds everything that can
change the answer (the device, the driver, the library versions, attnplan's own version, the
problem, the set of candidates timed); any change gives a new key and so a fresh measurement,
while the old entry stays valid for the old setup.  Files use `disk_store`'s checksummed format and
atomic writes; an entry that is damaged, malformed or stale (its stored key is not the requested
one) reads as absent and is measured again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import attrs

from .. import disk_store, kernel_cache
from ..sku import KernelSku

_MAGIC = b"ATTNPLAN-TUNING-1\n"
_SUFFIX = ".json"
LOCK_TIMEOUT_S = 600.0       # timing every candidate of a large problem (compiles included) takes minutes
STORE = disk_store.Store("autotune cache", "ATTNPLAN_TUNING_DIR", LOCK_TIMEOUT_S)


def tuning_dir() -> Path:
    """`$ATTNPLAN_TUNING_DIR`, else `tuning/` beside the kernel cache, so that one cache root
    (`ATTNPLAN_CACHE_DIR=/x/kernels` gives `/x/tuning`) holds both."""
    override = os.environ.get("ATTNPLAN_TUNING_DIR")
    path = Path(override) if override else kernel_cache.cache_dir().parent / "tuning"
    return disk_store.folder(path)


def _canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, so equal content gives equal keys and digests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _descriptor_text(value: Any) -> str:
    """A descriptor, its to_dict(), or JSON text of one, as canonical JSON text."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif isinstance(value, str):
        value = json.loads(value)
    return _canonical_json(value)


def _sorted_pairs(value: Any) -> tuple:
    """A dict or a sequence of pairs (JSON gives lists) as a sorted tuple of 2-tuples, so keys hash
    and compare by content whatever order the pairs came in."""
    if isinstance(value, str):
        raise TypeError(f"expected a dict or (name, value) pairs, got the string {value!r}")
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((name, item) for name, item in items))


def _sorted_names(value: Any) -> tuple:
    if isinstance(value, str):
        raise TypeError(f"expected a sequence of names, got the string {value!r}")
    return tuple(sorted(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pairs_of(is_value: Callable[[Any], bool], what: str):
    def check(_instance, attribute, pairs: tuple) -> None:
        for name, value in pairs:
            if not isinstance(name, str) or not is_value(value):
                raise TypeError(f"{attribute.name}: expected (name, {what}) pairs, got {(name, value)!r}")
    return check


_string = attrs.validators.instance_of(str)
_names = attrs.validators.deep_iterable(member_validator=_string)


def _iso_date(_instance, attribute, value: str) -> None:
    _string(_instance, attribute, value)
    datetime.datetime.fromisoformat(value)      # ValueError when it is not an ISO date


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _build(cls, data: Any, **nested):
    """cls(**data) with exactly cls's fields present; every failure as a ValueError naming them."""
    names = [field.name for field in attrs.fields(cls)]
    try:
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping, got {type(data).__name__}")
        if set(data) != set(names):
            raise KeyError(f"got the fields {sorted(data)}")
        return cls(**{**data, **{name: make(data[name]) for name, make in nested.items()}})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a {cls.__name__} ({type(exc).__name__}: {exc}); expected the fields {names}") from None


@attrs.frozen
class TuningKey:
    """Everything a timing verdict depends on.  Equal keys mean the stored verdict still holds."""

    device_name: str = attrs.field(validator=_string)
    driver: str = attrs.field(validator=_string)
    versions: tuple = attrs.field(converter=_sorted_pairs, validator=_pairs_of(lambda v: isinstance(v, str), "version"))
    attnplan_version: str = attrs.field(validator=_string)
    descriptor: str = attrs.field(converter=_descriptor_text)
    candidates: tuple = attrs.field(converter=_sorted_names, validator=_names)

    def to_dict(self) -> dict:
        return {"device_name": self.device_name, "driver": self.driver, "versions": dict(self.versions),
                "attnplan_version": self.attnplan_version, "descriptor": json.loads(self.descriptor),
                "candidates": list(self.candidates)}

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of every field: the entry's file name."""
        return hashlib.sha256(_canonical_json(self.to_dict()).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping) -> "TuningKey":
        return _build(cls, data)


@attrs.frozen
class TuningEntry:
    """One measured verdict: the winning backend and SKU, and what every candidate measured."""

    key: TuningKey = attrs.field(validator=attrs.validators.instance_of(TuningKey))
    winner: str = attrs.field(validator=_string)
    winner_sku: dict = attrs.field()
    timings_ms: tuple = attrs.field(converter=_sorted_pairs, validator=_pairs_of(_is_number, "median ms"))
    tflops: tuple = attrs.field(converter=_sorted_pairs, validator=_pairs_of(_is_number, "TFLOP/s"))
    date: str = attrs.field(factory=_now, validator=_iso_date)

    @winner_sku.validator
    def _winner_sku_is_the_winners(self, attribute, value: dict) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"{attribute.name}: expected a KernelSku dict, got {type(value).__name__}")
        backend = KernelSku.from_dict(value).backend
        if backend != self.winner:
            raise ValueError(f"winner {self.winner!r} is not the winner_sku's backend {backend!r}")

    def to_dict(self) -> dict:
        return {"key": self.key.to_dict(), "winner": self.winner, "winner_sku": self.winner_sku,
                "timings_ms": dict(self.timings_ms), "tflops": dict(self.tflops), "date": self.date}

    @classmethod
    def from_dict(cls, data: Mapping) -> "TuningEntry":
        """The entry `data` describes; ValueError on a missing or extra field or a bad value."""
        return _build(cls, data, key=TuningKey.from_dict)


def _path(key: TuningKey) -> Path:
    return tuning_dir() / f"{key.digest()}{_SUFFIX}"


def _parse(decoded: Optional[tuple[dict, bytes]]) -> Optional[TuningEntry]:
    if decoded is None:
        return None
    try:
        return TuningEntry.from_dict(json.loads(decoded[1]))
    except ValueError:          # bad JSON, bad UTF-8 and malformed fields alike
        return None


def _load(path: Path, key: TuningKey) -> Optional[TuningEntry]:
    entry = _parse(disk_store.read(path, _MAGIC))
    return entry if entry is not None and entry.key == key else None


def _serialize(entry: TuningEntry) -> bytes:
    return disk_store.encode(json.dumps(entry.to_dict(), sort_keys=True, indent=1).encode(), {}, _MAGIC)


def load(key: TuningKey) -> Optional[TuningEntry]:
    """The stored verdict for `key`; None when absent, damaged, malformed or stale."""
    return _load(_path(key), key)


def get_or_tune(key: TuningKey, tune: Callable[[], TuningEntry],
                accept: Callable[[TuningEntry], bool] = lambda entry: True) -> tuple[TuningEntry, bool]:
    """The stored verdict for `key`, else tune() stored in its place.  Returns (entry, was_cached).

    `accept` lets the caller refuse a stored entry that loads but no longer suits it (say, its
    winner cannot serve now); a refused entry is tuned again and overwritten.  Several processes
    missing the same key at once tune it once: the others wait on the key's lock and read it."""
    def usable(path: Path) -> Optional[TuningEntry]:
        entry = _load(path, key)
        return entry if entry is not None and accept(entry) else None

    def tune_for_key() -> TuningEntry:
        entry = tune()
        if entry.key != key:        # it would be stale on its first read, and tuned on every call
            raise ValueError(f"tune() returned an entry for {entry.key}, not for the requested {key}")
        return entry

    return disk_store.get_or_make(STORE, _path(key), usable, tune_for_key, _serialize)


def entries() -> Iterator[tuple[Path, Optional[TuningEntry]]]:
    """Every stored file with its entry (None: damaged or malformed), for `attnplan cache list`."""
    for path, decoded in disk_store.scan(tuning_dir(), _SUFFIX, _MAGIC):
        yield path, _parse(decoded)


def clear() -> int:
    """Remove every entry (and stale locks / temporaries); returns how many entries went."""
    return disk_store.clear(tuning_dir(), _SUFFIX)
