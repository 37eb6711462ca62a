"""The on-disk kernel cache: hits, damaged entries rebuilt, atomic writes, and several processes
building the same entry at once (one builds, the others wait and read it)."""

import multiprocessing
import os
import time

import pytest

from attnplan import kernel_cache


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(tmp_path))
    return tmp_path


def _builder(calls, body=b"\x7fELF cubin bytes"):
    def build():
        calls.append(1)
        return body
    return build


def test_miss_then_hit():
    calls = []
    assert kernel_cache.get_or_build("k1", {"name": "n", "arch": "sm_90"}, _builder(calls)) == (b"\x7fELF cubin bytes",
                                                                                                 False)
    assert kernel_cache.get_or_build("k1", {"name": "n", "arch": "sm_90"}, _builder(calls)) == (b"\x7fELF cubin bytes",
                                                                                                 True)
    assert len(calls) == 1
    [entry] = kernel_cache.entries()
    assert (entry.name, entry.arch) == ("n", "sm_90")


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_entries_are_detected_and_rebuilt(private_cache, damage):
    calls = []
    kernel_cache.get_or_build("k2", {"name": "n"}, _builder(calls))
    path = private_cache / "k2.cubin"
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[:-5], "flip": blob[:-1] + bytes([blob[-1] ^ 1]), "empty": b"",
                      "garbage": b"not a cache entry"}[damage])
    assert [e.name for e in kernel_cache.entries()] == ["(damaged)"]
    body, cached = kernel_cache.get_or_build("k2", {"name": "n"}, _builder(calls))
    assert body == b"\x7fELF cubin bytes" and not cached and len(calls) == 2
    assert kernel_cache.get_or_build("k2", {"name": "n"}, _builder(calls))[1]


def test_failed_build_leaves_no_entry(private_cache):
    def broken():
        raise RuntimeError("compile failed")
    with pytest.raises(RuntimeError):
        kernel_cache.get_or_build("k3", {}, broken)
    assert not list(private_cache.glob("k3*.cubin")) and not list(private_cache.glob("*.tmp"))


def _race(directory, marker_dir, index, queue):
    os.environ["ATTNPLAN_CACHE_DIR"] = directory

    def slow_build():
        open(os.path.join(marker_dir, f"built-{index}"), "w").close()
        time.sleep(0.5)
        return b"the one cubin"
    queue.put(kernel_cache.get_or_build("shared", {"name": "race"}, slow_build))


def test_concurrent_processes_build_once(private_cache, tmp_path_factory):
    markers = tmp_path_factory.mktemp("markers")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_race, args=(str(private_cache), str(markers), i, queue)) for i in range(4)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert all(body == b"the one cubin" for body, _ in results)
    assert len(list(markers.iterdir())) == 1                # one process compiled, three waited and read
    assert sorted(cached for _, cached in results) == [False, True, True, True]


def test_clear_removes_entries_locks_and_temporaries(private_cache):
    kernel_cache.get_or_build("k4", {}, _builder([]))
    (private_cache / "stale.cubin.tmp").write_bytes(b"x")
    assert kernel_cache.clear() == 1
    assert not [p for p in private_cache.iterdir() if p.suffix in (".cubin", ".lock", ".tmp")]
