"""Workspaces a runner keeps between calls: one device buffer per (device, stream), allocated on the
first call that needs it and reused by every later call on that stream, so that a planned `run`
allocates nothing once warm (and a CUDA graph captured after a warm-up call replays the same
addresses).  Per stream, because kernels of one stream run in order and may share a buffer, while
calls on two streams may overlap and must not.

A caller's `workspace=` is used as given, after a size check: a buffer that is too small is an
InvalidArguments naming the size needed, never silently replaced.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from attnplan.errors import InvalidArguments


def _cupy_allocate(device_index: int, nbytes: int):
    import cupy
    with cupy.cuda.Device(device_index):
        buffer = cupy.empty(nbytes, dtype=cupy.uint8)
    return buffer, int(buffer.data.ptr)


class StreamWorkspaces:
    """Workspace buffers by (device, stream handle).  `allocate(device_index, nbytes)` returns
    (owner, address); the default allocates CuPy device memory."""

    def __init__(self, allocate: Optional[Callable] = None):
        self._allocate = allocate or _cupy_allocate
        self._buffers: dict = {}         # (device, stream) -> (owner, address, nbytes)
        self._retired: list = []         # outgrown buffers: kernels queued before the growth may still use them
        self._lock = threading.Lock()

    def acquire(self, device_index: int, stream: int, need: int, given=None) -> tuple:
        """(owner, address) of at least `need` bytes for a call on `stream`: the caller's `given`
        buffer (an attnplan Tensor; InvalidArguments when too small) or the kept one."""
        if need <= 0:
            return None, 0
        if given is not None:
            if given.data.nbytes < need:
                raise InvalidArguments("workspace", f"holds {given.data.nbytes} bytes, the plan needs {need} "
                                                    f"(plan.workspace_size)")
            return given.data, given.ptr
        key = (device_index, stream)
        held = self._buffers.get(key)
        if held is not None and held[2] >= need:
            return held[0], held[1]
        with self._lock:
            held = self._buffers.get(key)
            if held is None or held[2] < need:
                if held is not None:
                    self._retired.append(held[0])
                owner, address = self._allocate(device_index, need)
                held = self._buffers[key] = (owner, address, need)
            return held[0], held[1]

    def pointer(self, device_index: int, stream: int, need: int, given=None) -> int:
        return self.acquire(device_index, stream, need, given)[1]

    def __len__(self) -> int:
        return len(self._buffers)
