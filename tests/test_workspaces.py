"""backends/workspaces.py: a planned run allocates its workspace once per (device, stream) and reuses
it; a caller's workspace is size-checked, never silently replaced."""

import types

import pytest

from attnplan.backends.workspaces import StreamWorkspaces
from attnplan.errors import InvalidArguments


class FakeAllocator:
    def __init__(self):
        self.calls = []

    def __call__(self, device_index, nbytes):
        self.calls.append((device_index, nbytes))
        return object(), 0x1000 * len(self.calls)


def _given(nbytes, ptr=0xABC00):
    return types.SimpleNamespace(data=types.SimpleNamespace(nbytes=nbytes), ptr=ptr)


def test_one_buffer_per_device_and_stream_reused_by_later_calls():
    alloc = FakeAllocator()
    ws = StreamWorkspaces(alloc)
    first = ws.pointer(0, 7, 256)
    assert ws.pointer(0, 7, 256) == first and ws.pointer(0, 7, 100) == first      # no new allocation
    assert alloc.calls == [(0, 256)]
    other_stream = ws.pointer(0, 8, 256)                 # calls on two streams may overlap: two buffers
    other_device = ws.pointer(1, 7, 256)
    assert len({first, other_stream, other_device}) == 3 and len(ws) == 3
    assert alloc.calls == [(0, 256), (0, 256), (1, 256)]


def test_a_larger_need_grows_the_buffer_and_keeps_the_old_one_alive():
    alloc = FakeAllocator()
    ws = StreamWorkspaces(alloc)
    owner, first = ws.acquire(0, 7, 256)
    _, grown = ws.acquire(0, 7, 1024)
    assert grown != first and alloc.calls[-1] == (0, 1024)
    assert owner in ws._retired                      # kernels queued before the growth may still read it
    assert ws.pointer(0, 7, 512) == grown


def test_the_callers_workspace_is_used_when_large_enough_and_refused_when_not():
    alloc = FakeAllocator()
    ws = StreamWorkspaces(alloc)
    assert ws.pointer(0, 7, 256, _given(256)) == 0xABC00
    with pytest.raises(InvalidArguments, match=r"workspace.*holds 255 bytes, the plan needs 256"):
        ws.pointer(0, 7, 256, _given(255))
    assert alloc.calls == []


def test_no_workspace_needed_is_no_buffer():
    ws = StreamWorkspaces(FakeAllocator())
    assert ws.acquire(0, 7, 0) == (None, 0) and len(ws) == 0
