"""The small arrays a cuDNN SDPA graph reads besides the caller's (sequence lengths, ragged offsets,
the dropout seed and offset), made in place in one buffer kept per (device, stream): once a stream's
buffer exists a call allocates nothing, and the seed is copied to the device only when it changes
(a CUDA graph captured after a warm-up call with the same seed replays without a host copy).

Layout of a stream's buffer: the seed and the Philox offset (two int64; the offset is zeroed when
the buffer is made), then the per-sequence query and key lengths, then one ragged-offset array per
offset role, each ALIGN-aligned.
"""

from __future__ import annotations

import threading

import numpy as np

from ..workspaces import StreamWorkspaces

ALIGN = 256


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def layout(batch: int, offsets: int) -> tuple[dict, int]:
    """Byte offsets of "seed", "rng_offset", "seq_q", "seq_kv", "offsets" (a list), and the size."""
    lengths = _round_up(4 * max(batch, 1), ALIGN)
    ragged = _round_up(4 * (batch + 1), ALIGN)
    places = {"seed": 0, "rng_offset": 8, "seq_q": ALIGN, "seq_kv": ALIGN + lengths,
              "offsets": [ALIGN + 2 * lengths + i * ragged for i in range(offsets)]}
    return places, ALIGN + 2 * lengths + offsets * ragged


class IndexArrays:
    """One runner's kept index buffers and the views over them."""

    def __init__(self, batch: int):
        self.batch = batch
        self.buffers = StreamWorkspaces()
        self._views: dict = {}            # (buffer address, offsets) -> views
        self._seeds: dict = {}            # buffer address -> the seed it holds
        self._lock = threading.Lock()

    def views(self, cupy, device_index: int, stream: int, offsets: int) -> dict:
        """int32 views "seq_q", "seq_kv" (batch), "offsets" (a list of batch + 1), and "seed_words" (int64 [2])."""
        places, size = layout(self.batch, offsets)
        base = self.buffers.pointer(device_index, stream, size)
        key = (base, offsets)
        views = self._views.get(key)
        if views is None:
            with self._lock:
                memory = cupy.cuda.UnownedMemory(base, size, self, device_index)

                def array(offset, count, dtype):
                    return cupy.ndarray((count,), dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, offset))
                views = {"seed_words": array(0, 2, cupy.int64), "seq_q": array(places["seq_q"], self.batch, cupy.int32),
                         "seq_kv": array(places["seq_kv"], self.batch, cupy.int32),
                         "offsets": [array(at, self.batch + 1, cupy.int32) for at in places["offsets"]]}
                if base not in self._seeds:                 # a new buffer: offset 0, no seed yet
                    cupy.cuda.runtime.memsetAsync(base, 0, 16, stream)
                    self._seeds[base] = None
                self._views[key] = views
        return views

    def seed_pointers(self, cupy, views: dict, seed: int, stream: int) -> tuple[int, int]:
        """(seed, offset) device addresses holding `seed`; copied on `stream` only if it changed."""
        words = views["seed_words"]
        base = int(words.data.ptr)
        if self._seeds.get(base) != seed:
            value = np.array([seed], dtype=np.uint64).view(np.int64)
            # Pageable source: the copy has read it when the call returns, in stream order.
            cupy.cuda.runtime.memcpyAsync(base, value.ctypes.data, 8, cupy.cuda.runtime.memcpyHostToDevice, stream)
            self._seeds[base] = seed
        return base, base + 8


__all__ = ["IndexArrays", "layout"]
