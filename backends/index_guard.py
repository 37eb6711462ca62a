"""The index arguments checked on the device: `run` neither copies them to the host nor waits.

Before a GPU plan's kernels, `IndexGuard.apply` launches kernels/common/index_check.cu on the
caller's stream.  It checks cu_seqlens_q, cu_seqlens_kv, seqlens_kv and block_table against the
rules of docs/semantics.md (kernels/common/index_rules.cuh; the host's check_index_values states the
same), ORs a fault bit per broken argument into a status word, and writes safe copies (a broken
cu_seqlens array as zeros, lengths clamped, bad page ids as page 0), which the plan's kernels read
instead of the caller's arrays: bad values never reach memory.  The status word is copied to pinned
host memory on the same stream; the next `apply` on that stream (the next `run`) reports what has
landed there, and `check()` waits for every stream's copy and reports: InvalidArguments naming the
argument.  Four stream operations per call (a memset, the check, the copy, an event record), no allocation
once a stream's scratch exists, so a warmed-up `run` can be captured in a CUDA graph.

The scratch (the status word and the copies, `scratch_bytes(desc)`) is kept per (device, stream),
or carved from the caller's `workspace=` at `offset` (Plan.workspace_size counts it).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from typing import Optional

import attrs

from attnplan.descriptor import AttentionDescriptor
from attnplan.errors import InvalidArguments
from attnplan.kernel_cache import get_or_build
from attnplan.streams import stream_handle

from .nvrtc.params import StructLayout
from .workspaces import StreamWorkspaces

ENTRY = "attn_index_check"
ENTRY_FILE = "common/index_check.cu"
THREADS = 256
ALIGN = 256
PARAMS = StructLayout("IndexCheckParams", [
    ("cu_seqlens_q", "ptr"), ("cu_seqlens_q_safe", "ptr"), ("cu_seqlens_kv", "ptr"), ("cu_seqlens_kv_safe", "ptr"),
    ("seqlens_kv", "ptr"), ("seqlens_kv_safe", "ptr"), ("block_table", "ptr"), ("block_table_safe", "ptr"),
    ("status", "ptr"), ("batch", "i64"), ("total_q", "i64"), ("total_kv", "i64"), ("max_seqlen_q", "i64"),
    ("max_seqlen_kv", "i64"), ("seqlen_kv", "i64"), ("page_size", "i64"), ("pages_per_seq", "i64"),
    ("table_row_stride", "i64"), ("num_pages", "i64")])
# The status word's bits (index_rules.cuh IndexFault) -> the argument.
FAULTS = {1: "cu_seqlens_q", 2: "cu_seqlens_kv", 4: "seqlens_kv", 8: "block_table"}


def guarded_arguments(desc: AttentionDescriptor) -> tuple:
    """The index arguments `desc` takes, in the status word's order."""
    paged = desc.paged is not None
    names = []
    if desc.varlen:
        names.append("cu_seqlens_q")
        if not paged:
            names.append("cu_seqlens_kv")
    if paged:
        names += ["seqlens_kv", "block_table"]
    return tuple(names)


def rule(name: str, desc: AttentionDescriptor) -> str:
    """What `name`'s values must be (the rules check_index_values raises on)."""
    if name in ("cu_seqlens_q", "cu_seqlens_kv"):
        side, max_len = ("q", desc.seqlen_q) if name == "cu_seqlens_q" else ("k", desc.seqlen_kv)
        return (f"must start at 0, never decrease, end at {side}'s row total, and hold no sequence longer than "
                f"the descriptor's max {max_len}")
    if name == "seqlens_kv":
        return f"values must lie in [0, {desc.seqlen_kv}] (seqlen_kv)"
    return "rows must name pages in [0, k's page count) for every page their sequence uses"


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@attrs.frozen
class Scratch:
    """Byte offsets in a guard's scratch: the status word, then each safe copy (None: not used)."""
    cu_seqlens_q: Optional[int]
    cu_seqlens_kv: Optional[int]
    seqlens_kv: Optional[int]
    block_table: Optional[int]
    size: int


@functools.lru_cache(maxsize=256)
def scratch_layout(desc: AttentionDescriptor, table_row_stride: Optional[int] = None) -> Scratch:
    """Where the copies go.  A block table copy keeps the caller's row stride (up to
    `table_row_stride`, by default the row length), so that its strides equal the caller's."""
    used = guarded_arguments(desc)
    at, offsets = ALIGN, {}
    sizes = {"cu_seqlens_q": desc.batch + 1, "cu_seqlens_kv": desc.batch + 1, "seqlens_kv": desc.batch}
    if desc.paged is not None:
        stride = table_row_stride or desc.paged.max_pages_per_seq
        sizes["block_table"] = max(desc.batch - 1, 0) * stride + desc.paged.max_pages_per_seq
    for name in ("cu_seqlens_q", "cu_seqlens_kv", "seqlens_kv", "block_table"):
        if name in used:
            offsets[name] = at
            at += _round_up(4 * sizes[name], ALIGN)
        else:
            offsets[name] = None
    return Scratch(size=at, **offsets)


def scratch_bytes(desc: AttentionDescriptor) -> int:
    """The scratch a call needs with a dense block table (0 where `desc` takes no index arguments);
    Plan.workspace_size adds it.  A caller's block table with padded rows needs the padding too:
    `scratch_layout(desc, row_stride).size`."""
    return scratch_layout(desc).size if guarded_arguments(desc) else 0


def params_values(desc: AttentionDescriptor, bound, base: int, scratch: Scratch) -> dict:
    """The IndexCheckParams fields for a call whose scratch starts at device address `base`."""
    def pointer(name):
        t = getattr(bound, name)
        return t.ptr if t is not None else 0

    values = {name: 0 for name, _ in PARAMS.fields}
    values.update(status=base, batch=desc.batch, total_q=bound.q.shape[0], total_kv=bound.k.shape[0],
                  max_seqlen_q=desc.seqlen_q, max_seqlen_kv=desc.seqlen_kv, seqlen_kv=desc.seqlen_kv)
    for name in guarded_arguments(desc):
        values[name] = pointer(name)
        values[f"{name}_safe"] = base + getattr(scratch, name)
    if desc.paged is not None:
        table = bound.block_table
        values.update(page_size=desc.paged.page_size, pages_per_seq=desc.paged.max_pages_per_seq,
                      table_row_stride=table.strides[0] if table.shape[0] > 1 else desc.paged.max_pages_per_seq,
                      num_pages=bound.k.shape[0])
    return values


def fault_error(status: int, desc: AttentionDescriptor, stream: int) -> InvalidArguments:
    """The error for a status word: the first broken argument, its rule, and where it was found."""
    names = [name for bit, name in FAULTS.items() if status & bit]
    others = f" (also broken: {', '.join(names[1:])})" if len(names) > 1 else ""
    return InvalidArguments(names[0], f"{rule(names[0], desc)}; the device-side check of a run on stream "
                                      f"{stream:#x} found it broken{others}. That run read safe copies instead "
                                      f"(broken cu_seqlens as empty sequences, lengths clamped, bad pages as page "
                                      f"0), so its outputs are not the attention of those arguments")


# -- the kernel ----------------------------------------------------------------------------------

def source() -> str:
    return PARAMS.c_struct() + f'#include "{ENTRY_FILE}"\n'


def options(arch: int) -> list:
    from .nvrtc import compiler
    return list(compiler.BASE_OPTIONS) + [f"--gpu-architecture=sm_{arch}", f"-I{compiler.kernels_dir()}"]


@functools.lru_cache(maxsize=None)
def cubin(arch: int) -> bytes:
    """The check kernel for sm_`arch`, through the disk cache."""
    from .nvrtc import compiler
    text, opts = source(), options(arch)
    key = hashlib.sha256("\0".join([ENTRY, text, compiler._tree_hash(str(compiler.kernels_dir())),
                                    compiler.nvrtc_version(), *opts[:-1]]).encode()).hexdigest()
    return get_or_build(key, {"name": ENTRY, "arch": f"sm_{arch}", "nvrtc": compiler.nvrtc_version()},
                        lambda: compiler.compile_source(text, ENTRY, opts)[0])[0]


def unavailable_reason(arch: int) -> str:
    """Why the device check cannot run for sm_`arch` here ("" when it can)."""
    try:
        from .nvrtc import compiler
        if arch not in compiler.supported_archs():
            return f"NVRTC {compiler.nvrtc_version()} cannot target sm_{arch}"
    except Exception as exc:          # NvrtcUnavailable, or cuda-python missing
        return str(exc)
    return ""


# -- one plan's guard ------------------------------------------------------------------------------

@attrs.define(eq=False)
class _StreamState:
    pinned: object           # a numpy uint32[1] view of pinned host memory: the status word's copy
    owner: object            # keeps the pinned memory alive
    event: object            # recorded after each copy (not while a CUDA graph capture holds the stream)
    views: dict              # (address, shape, strides) -> the Tensor of a safe copy
    recorded: bool = False   # whether `event` marks a copy check() can wait for


class IndexGuard:
    """The device-side index check of one plan (`offset`: where its scratch starts in a caller's
    workspace).  Thread-safe: states are made under a lock, and each stream is the caller's to order."""

    def __init__(self, desc: AttentionDescriptor, device_index: int, arch: int, offset: int = 0, runtime=None):
        self.desc, self.device_index, self.arch, self.offset = desc, device_index, arch, offset
        self.names = guarded_arguments(desc)
        self.workspaces = StreamWorkspaces()
        self._runtime = runtime                 # tests give a fake; None: CuPy's
        self._kernel = None
        self._states: dict = {}
        self._lock = threading.Lock()

    # The CUDA calls, in one place (a fake replaces them in the CPU tests).
    def runtime(self):
        if self._runtime is None:
            self._runtime = CupyRuntime(self.device_index)
        return self._runtime

    def _state(self, stream: int) -> _StreamState:
        state = self._states.get(stream)
        if state is None:
            with self._lock:
                state = self._states.get(stream)
                if state is None:
                    pinned, owner = self.runtime().pinned_word()
                    state = self._states[stream] = _StreamState(pinned, owner, self.runtime().new_event(), {})
        return state

    def report(self, stream: int) -> None:
        """InvalidArguments for a fault an earlier call on `stream` left in its status copy (then clear it)."""
        state = self._states.get(stream)
        if state is not None and int(state.pinned[0]):
            status, state.pinned[0] = int(state.pinned[0]), 0
            raise fault_error(status, self.desc, stream)

    def check(self) -> None:
        """Wait for every stream's last status copy, then report the first fault (plan.check())."""
        for stream, state in list(self._states.items()):
            if state.recorded:
                self.runtime().wait_event(state.event)
            self.report(stream)

    def apply(self, bound) -> None:
        """Check `bound`'s index arguments on its stream and point it at the safe copies."""
        stream = stream_handle(bound.stream, bound.q.origin)
        self.report(stream)
        state = self._state(stream)
        table = bound.block_table
        stride = table.strides[0] if table is not None and table.shape[0] > 1 else None
        scratch = scratch_layout(self.desc, stride)
        if bound.workspace is not None:
            if bound.workspace.data.nbytes < self.offset + scratch.size:
                raise InvalidArguments("workspace", f"holds {bound.workspace.data.nbytes} bytes; with the index "
                                                    f"check's copies the plan needs {self.offset + scratch.size}")
            base = bound.workspace.ptr + self.offset
        else:
            base = self.workspaces.pointer(self.device_index, stream, scratch.size)
        runtime = self.runtime()
        if self._kernel is None:
            self._kernel = runtime.load(cubin(self.arch))
        filled = PARAMS.struct_class()(**params_values(self.desc, bound, base, scratch))
        runtime.clear_word(base, stream)
        runtime.launch(self._kernel, (max(self.desc.batch, 2), 1, 1), filled, stream)
        runtime.copy_word(state.pinned, base, stream)
        state.recorded = runtime.record(state.event, stream) or state.recorded
        for name in self.names:
            given = getattr(bound, name)
            # The copy's place depends on the block table's row stride, so a view is one of (address,
            # shape, strides): a kept buffer can serve calls whose tables are laid out differently.
            key = (base + getattr(scratch, name), tuple(given.shape), tuple(given.strides))
            view = state.views.get(key)
            if view is None:
                view = state.views[key] = runtime.int32_view(*key, name)
            setattr(bound, name, view)


class CupyRuntime:
    """IndexGuard's CUDA calls through CuPy."""

    def __init__(self, device_index: int):
        import cupy
        self.cupy, self.device_index = cupy, device_index

    def pinned_word(self):
        import numpy as np
        memory = self.cupy.cuda.alloc_pinned_memory(4)
        word = np.frombuffer(memory, dtype=np.uint32, count=1)
        word[0] = 0
        return word, memory

    def load(self, binary: bytes):
        from .nvrtc import launcher
        return launcher.load(binary, ENTRY, 0, THREADS, self.device_index)

    def launch(self, kernel, grid, filled, stream: int) -> None:
        from .nvrtc import launcher
        launcher.launch(kernel, grid, filled, stream)

    def clear_word(self, address: int, stream: int) -> None:
        self.cupy.cuda.runtime.memsetAsync(address, 0, 4, stream)

    def copy_word(self, word, address: int, stream: int) -> None:
        runtime = self.cupy.cuda.runtime
        runtime.memcpyAsync(word.ctypes.data, address, 4, runtime.memcpyDeviceToHost, stream)

    def new_event(self):
        runtime = self.cupy.cuda.runtime
        with self.cupy.cuda.Device(self.device_index):
            return _Event(runtime, runtime.eventCreateWithFlags(runtime.eventDisableTiming))

    def record(self, event, stream: int) -> bool:
        """Record `event` after the copy, unless a CUDA graph capture holds the stream (a replay's
        copy lands when the replay runs; check() then waits for the last eager one)."""
        runtime = self.cupy.cuda.runtime
        capturing = getattr(runtime, "streamIsCapturing", None)
        if capturing is not None and capturing(stream):
            return False
        runtime.eventRecord(event.handle, stream)
        return True

    def wait_event(self, event) -> None:
        event.wait()

    def int32_view(self, address: int, shape: tuple, strides: tuple, name: str):
        from attnplan.interop import as_tensor
        cupy = self.cupy
        extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
        memory = cupy.cuda.UnownedMemory(address, 4 * max(extent, 1), self, self.device_index)
        array = cupy.ndarray(shape, dtype=cupy.int32, memptr=cupy.cuda.MemoryPointer(memory, 0),
                             strides=tuple(4 * s for s in strides))
        return as_tensor(array, name)


class _Event:
    def __init__(self, runtime, handle):
        self.runtime, self.handle = runtime, handle

    def wait(self) -> None:
        self.runtime.eventSynchronize(self.handle)

    def __del__(self):
        try:
            self.runtime.eventDestroy(self.handle)
        except Exception:
            pass


__all__ = ["IndexGuard", "guarded_arguments", "scratch_bytes", "scratch_layout", "FAULTS", "PARAMS"]
