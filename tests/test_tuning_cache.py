"""The on-disk autotune cache: hits, damaged / malformed / stale / refused entries tuned again and
rewritten, one entry per setup, and several processes tuning the same key at once (one tunes)."""

import json
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from attnplan import disk_store
from attnplan.tuning import autotune_cache
from attnplan.tuning.autotune_cache import TuningEntry, TuningKey, get_or_tune, load
from tuning_workers import make_entry, make_key, race


@pytest.fixture(autouse=True)
def tuning_dir(tmp_path, monkeypatch):
    directory = tmp_path / "tuning-cache"
    monkeypatch.setenv("ATTNPLAN_TUNING_DIR", str(directory))
    yield directory
    assert not list(directory.glob("*.tmp")), "a write left its temporary file behind"


def _counting(key, calls, **entry_args):
    def tune():
        calls.append(1)
        return make_entry(key, **entry_args)
    return tune


def _path(directory: Path, key: TuningKey) -> Path:
    return directory / f"{key.digest()}.json"


def test_tunes_once_then_reads_the_file(tuning_dir):
    key, calls = make_key(), []
    first, cached = get_or_tune(key, _counting(key, calls))
    assert not cached and first.winner == "nvrtc" and len(calls) == 1
    again, cached = get_or_tune(key, _counting(key, calls, winner="cudnn"))
    assert cached and again == first and len(calls) == 1
    assert load(key) == first
    assert [(path, entry) for path, entry in autotune_cache.entries()] == [(_path(tuning_dir, key), first)]


def test_default_directory_is_beside_the_kernel_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNPLAN_TUNING_DIR")
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(tmp_path / "root" / "kernels"))
    assert autotune_cache.tuning_dir() == tmp_path / "root" / "tuning"
    assert (tmp_path / "root" / "tuning").is_dir()


def test_key_is_canonical_and_round_trips():
    key = make_key()
    reordered = TuningKey(device_name=key.device_name, driver=key.driver, versions={"cudnn": "9.13", "cupy": "14.0"},
                          attnplan_version=key.attnplan_version, descriptor=json.loads(key.descriptor),
                          candidates=list(reversed(key.candidates)))
    assert reordered == key and reordered.digest() == key.digest()
    assert TuningKey(**{**key.to_dict(), "descriptor": key.descriptor}) == key      # JSON text works too
    assert TuningKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    entry = make_entry(key)
    assert TuningEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    assert len({key.digest(), make_key(seqlen_q=64).digest(), make_key(driver="12.8").digest()}) == 3


def _entry_dict(**changes):
    return {**make_entry(make_key()).to_dict(), **changes}


@pytest.mark.parametrize("data", [
    [], {}, _entry_dict(extra=1), _entry_dict(winner="cudnn"), _entry_dict(winner_sku={"backend": "nvrtc"}),
    _entry_dict(timings_ms={"nvrtc": "fast"}), _entry_dict(tflops=[["nvrtc"]]), _entry_dict(date="yesterday"),
    _entry_dict(key={**make_key().to_dict(), "candidates": "nvrtc"}),
    _entry_dict(key={**make_key().to_dict(), "versions": {"cupy": 14}}),
], ids=["list", "empty", "extra-field", "winner-not-sku", "bad-sku", "text-timing", "bad-pair", "bad-date",
        "candidates-string", "version-not-text"])
def test_malformed_entries_raise_value_error(data):
    with pytest.raises(ValueError, match="not a Tuning"):
        TuningEntry.from_dict(data)


def _flip_timing_digit(blob: bytes) -> bytes:
    """nvrtc's 1.0 ms read as 5.0 ms: still a well-formed entry, so only the checksum can tell."""
    at = blob.rindex(b'"nvrtc": 1.0') + len(b'"nvrtc": ')
    return blob[:at] + bytes([blob[at] ^ 0x04]) + blob[at + 1:]


def _damaged(blob: bytes, damage: str) -> bytes:
    magic = blob[:blob.index(b"\n") + 1]
    good = make_entry(make_key()).to_dict()
    return {
        "truncate": lambda: blob[:-7],
        "empty": lambda: b"",
        "garbage": lambda: b"\x00\xffnot a tuning entry at all",
        "flip": lambda: _flip_timing_digit(blob),
        "bad-json": lambda: disk_store.encode(b"{not json", {}, magic),
        "malformed": lambda: disk_store.encode(json.dumps({**good, "timings_ms": {"nvrtc": None}}).encode(), {}, magic),
        "stale": lambda: disk_store.encode(json.dumps(make_entry(make_key(driver="12.8")).to_dict()).encode(), {},
                                           magic),
    }[damage]()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "flip", "bad-json", "malformed", "stale"])
def test_damaged_or_stale_entries_are_tuned_again_and_rewritten(tuning_dir, damage):
    key, calls = make_key(), []
    get_or_tune(key, _counting(key, calls))
    path = _path(tuning_dir, key)
    path.write_bytes(_damaged(path.read_bytes(), damage))
    assert load(key) is None
    retuned, cached = get_or_tune(key, _counting(key, calls, winner="cudnn"))
    assert not cached and len(calls) == 2 and retuned.winner == "cudnn"
    assert load(key) == retuned                                          # the file was rewritten
    assert get_or_tune(key, _counting(key, calls)) == (retuned, True) and len(calls) == 2


def test_refused_entry_is_tuned_again_and_rewritten(tuning_dir):
    key, calls = make_key(), []
    get_or_tune(key, _counting(key, calls))                             # nvrtc wins
    not_nvrtc = lambda entry: entry.winner != "nvrtc"                  # noqa: E731 (say nvrtc can no longer serve)
    retuned, cached = get_or_tune(key, _counting(key, calls, winner="cudnn"), accept=not_nvrtc)
    assert not cached and retuned.winner == "cudnn" and len(calls) == 2
    assert load(key) == retuned
    assert get_or_tune(key, _counting(key, calls), accept=not_nvrtc) == (retuned, True) and len(calls) == 2


@pytest.mark.parametrize("change", [{"attnplan_version": "0.2.0"}, {"versions": {"cupy": "14.0", "cudnn": "9.14"}},
                                    {"candidates": ["nvrtc", "reference"]}], ids=["attnplan", "library", "candidates"])
def test_another_setup_gets_its_own_entry(tuning_dir, change):
    old_key, new_key, calls = make_key(), make_key(**change), []
    old, _ = get_or_tune(old_key, _counting(old_key, calls))
    new, cached = get_or_tune(new_key, _counting(new_key, calls, winner="reference"))
    assert not cached and len(calls) == 2 and new.winner == "reference"
    assert load(old_key) == old and load(new_key) == new                # the old setup's entry stays valid
    assert len(list(tuning_dir.glob("*.json"))) == 2


def test_failed_or_wrong_tune_leaves_no_entry(tuning_dir):
    key = make_key()

    def broken():
        raise RuntimeError("timing failed")
    with pytest.raises(RuntimeError):
        get_or_tune(key, broken)
    with pytest.raises(ValueError, match="not for the requested"):
        get_or_tune(key, lambda: make_entry(make_key(driver="12.8")))
    assert not list(tuning_dir.glob("*.json"))


def test_clear_removes_entries_locks_and_temporaries(tuning_dir):
    key = make_key()
    get_or_tune(key, lambda: make_entry(key))
    (tuning_dir / "leftover.json.tmp").write_bytes(b"x")
    assert autotune_cache.clear() == 1
    assert not list(tuning_dir.iterdir())


def _run_racers(tuning_dir, tmp_path, monkeypatch, seqlens):
    """One spawned process per seqlen; returns [(index, entry dict, cached)] and the tuners' indices."""
    # Spawned children import `tuning_workers` by name: make tests/ importable for them.
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests_dir, *sys.path]))
    counter = tmp_path / "tuned.txt"
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(len(seqlens)), context.Queue()
    workers = [context.Process(target=race, args=(str(tuning_dir), str(counter), index, seqlen, barrier, queue))
               for index, seqlen in enumerate(seqlens)]
    for worker in workers:
        worker.start()
    results = sorted(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return results, sorted(int(line) for line in counter.read_text().split())


def test_concurrent_processes_tune_once(tuning_dir, tmp_path, monkeypatch):
    results, tuners = _run_racers(tuning_dir, tmp_path, monkeypatch, [128] * 4)
    assert len(tuners) == 1                                              # one tuned, three waited and read
    assert [index for index, _, cached in results if not cached] == tuners
    assert len({json.dumps(entry, sort_keys=True) for _, entry, _ in results}) == 1
    assert load(make_key()) == TuningEntry.from_dict(results[0][1])


def test_concurrent_processes_with_different_keys_each_write_theirs(tuning_dir, tmp_path, monkeypatch):
    seqlens = [64, 128, 256, 512]
    results, tuners = _run_racers(tuning_dir, tmp_path, monkeypatch, seqlens)
    assert tuners == [0, 1, 2, 3] and not any(cached for _, _, cached in results)
    assert len(list(tuning_dir.glob("*.json"))) == 4
    for (index, entry, _), seqlen in zip(results, seqlens):
        assert load(make_key(seqlen_q=seqlen)) == TuningEntry.from_dict(entry)
