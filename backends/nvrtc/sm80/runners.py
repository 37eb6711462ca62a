"""The sm80 kernels at run time: the forward runner, and the backward's workspace layout, kernel
launches and d sink_logits.

Forward (kernels/sm80/fwd.cu): attn_fwd_kernel, grid (ceil(seqlen_q / block_m), heads_q, batch).

Backward launch order on the caller's stream (kernels/sm80/bwd.cu):
  1. attn_bwd_preprocess_kernel   delta = rowsum(dO * O) -> workspace; zeroes the dQ accumulator
  2. attn_bwd_kernel              dK, dV (and dQ += dS K through fp32 atomics unless deterministic)
  3. attn_bwd_dq_convert_kernel   dQ = scale * accumulator          (default mode)
     attn_bwd_dq_kernel           dQ recomputed per query tile      (deterministic=True)
then d sink_logits_h = -sum_{b,i} exp(sink_h - lse_{b,h,i}) * delta_{b,h,i} with CuPy (rows with
lse = -inf contribute nothing).

Workspace (one device buffer; `plan.workspace_size` bytes: the caller's, or the one the runner keeps
per stream, backends/workspaces.py, allocated on the first call):
  delta     fp32 [batch][heads_q][seqlen_q]               varlen: [heads_q][total_q]
  dq_accum  fp32 [batch][seqlen_q][heads_q][head_dim]     varlen: [total_q][heads_q][head_dim]
            (absent in deterministic mode), starting at a 256-byte boundary.
"""

from __future__ import annotations

import math
import warnings

import attrs

from attnplan.arguments import lse_shape
from attnplan.descriptor import AttentionDescriptor
from attnplan.device import Device
from attnplan.errors import InvalidArguments
from attnplan.layout_cache import LayoutCache
from attnplan.streams import stream_handle

from ...workspaces import StreamWorkspaces
from .. import launcher, params
from ..dispatch import DispatchKey
from ..launch_params import (backward_layout_values, backward_pointer_values, check_vector_access,
                             check_vector_pointers, check_vector_strides, layout_values, pointer_values)

FORWARD_KERNEL = "attn_fwd_kernel"
PREPROCESS_KERNEL, BACKWARD_KERNEL = "attn_bwd_preprocess_kernel", "attn_bwd_kernel"
DQ_CONVERT_KERNEL, DQ_KERNEL = "attn_bwd_dq_convert_kernel", "attn_bwd_dq_kernel"
AUX_ROWS = 64          # rows per CTA of the preprocess and convert kernels
AUX_THREADS = 128
ALIGN = 256            # workspace base and dq_accum offset: 256-byte boundaries
FORWARD_PER_CALL = ("q", "k", "v", "out", "lse", "alibi_slopes", "sink_logits", "cu_seqlens_q", "cu_seqlens_kv",
                    "block_table", "seqlens_kv", "dropout_seed")


def forward_entry_points(key: DispatchKey) -> tuple:
    return (FORWARD_KERNEL,)


def backward_entry_points(key: DispatchKey) -> tuple:
    return (PREPROCESS_KERNEL, BACKWARD_KERNEL, DQ_KERNEL if key.deterministic else DQ_CONVERT_KERNEL)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@attrs.frozen
class WorkspaceLayout:
    delta_bytes: int
    dq_accum_offset: int
    dq_accum_bytes: int

    @property
    def total(self) -> int:
        return self.dq_accum_offset + self.dq_accum_bytes

    @classmethod
    def for_problem(cls, desc: AttentionDescriptor) -> "WorkspaceLayout":
        # Varlen: total_q <= batch * seqlen_q (every sequence is at most the descriptor's maximum).
        rows = desc.batch * desc.seqlen_q * desc.heads_q
        delta = rows * 4
        accum = 0 if desc.deterministic else rows * desc.head_dim * 4
        return cls(delta, _round_up(delta, ALIGN), accum)


def workspace_size(desc: AttentionDescriptor) -> int:
    """Bytes of the one workspace buffer: the backward's (the forward needs none)."""
    return WorkspaceLayout.for_problem(desc).total if desc.direction == "backward" else 0


def workspace_strides(desc: AttentionDescriptor, total_q: int) -> dict:
    """Element strides of the workspace views for the kernel parameter block."""
    if desc.layout == "thd":
        return {"delta_batch_stride": 0, "delta_head_stride": total_q,
                "dqa_batch_stride": 0, "dqa_row_stride": desc.heads_q * desc.head_dim,
                "dqa_head_stride": desc.head_dim}
    return {"delta_batch_stride": desc.heads_q * desc.seqlen_q, "delta_head_stride": desc.seqlen_q,
            "dqa_batch_stride": desc.seqlen_q * desc.heads_q * desc.head_dim,
            "dqa_row_stride": desc.heads_q * desc.head_dim, "dqa_head_stride": desc.head_dim}


def _cupy_stream(cupy, handle: int, device_index: int):
    """CuPy's view of the caller's stream, so that the workspace comes from the stream-ordered pool
    of that stream and the d sink_logits reduction runs on it."""
    with warnings.catch_warnings():   # CuPy 14 deprecates ExternalStream in favour of Stream.from_external
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(handle, device_index)


class ForwardRunner:
    """Launches the forward kernel for bound arguments (loads the module on first use).  The stride
    checks and the parameter block's layout fields are worked out once per argument signature."""

    notes = "forward: one CTA per (query tile, head, batch); no atomics"

    def __init__(self, desc: AttentionDescriptor, key: DispatchKey, cubin: bytes, shared: dict, device: Device,
                 struct: params.StructLayout):
        self.desc, self.key, self.cubin, self.device, self.struct = desc, key, cubin, device, struct
        self.shared = shared["shared_memory_bytes"]
        self.grid = (math.ceil(desc.seqlen_q / key.tiles.block_m), desc.heads_q, desc.batch)
        self._kernel = None
        self._checked = LayoutCache()
        self._blocks = LayoutCache()

    def kernel(self):
        if self._kernel is None:
            self._kernel = launcher.load(self.cubin, FORWARD_KERNEL, self.shared, self.key.tiles.num_warps * 32,
                                         self.device.index)
        return self._kernel

    def check_arguments(self, bound) -> None:
        check_vector_access({"q": bound.q, "k": bound.k, "v": bound.v, "out": bound.out}, bound.signature,
                            self._checked)

    def _block(self, bound, out, lse) -> params.ParamBlock:
        check_vector_strides({"out": out})          # q, k, v: checked by Plan.can_implement
        return params.ParamBlock(self.struct, layout_values(self.desc, bound, out, lse), FORWARD_PER_CALL)

    def __call__(self, bound, out, lse) -> None:
        block = self._blocks.get(bound.signature, self._block, bound, out, lse)
        check_vector_pointers({"out": out})
        handle = stream_handle(bound.stream, bound.q.origin)
        launcher.launch(self.kernel(), self.grid, block.fill(pointer_values(bound, out, lse)), handle)


class BackwardRunner:
    """Launches the backward kernels of one dispatch key (modules load on first use)."""

    def __init__(self, desc: AttentionDescriptor, key: DispatchKey, cubin: bytes, shared: dict, device: Device,
                 struct: params.StructLayout):
        self.desc, self.key, self.cubin, self.device, self.struct = desc, key, cubin, device, struct
        self.shared, self.dq_shared = shared["shared_memory_bytes"], shared.get("dq_shared_memory_bytes", 0)
        self.layout = WorkspaceLayout.for_problem(desc)
        self._kernels: dict = {}
        self._checked = LayoutCache()
        self._blocks = LayoutCache()
        self.workspaces = StreamWorkspaces()     # the backward's, one per stream, kept between calls

    @property
    def notes(self) -> str:
        return ("backward: dK/dV per (key tile, kv head, sequence) over the GQA group; "
                + ("dQ per (query tile, head, sequence), no atomics" if self.desc.deterministic
                   else "dQ through fp32 atomics (run-to-run bits may differ)"))

    def _kernel(self, entry: str):
        if entry not in self._kernels:
            if entry == BACKWARD_KERNEL:
                shared, threads = self.shared, self.key.tiles.num_warps * 32
            elif entry == DQ_KERNEL:
                shared, threads = self.dq_shared, self.key.dq_tiles.num_warps * 32
            else:
                shared, threads = 0, AUX_THREADS
            self._kernels[entry] = launcher.load(self.cubin, entry, shared, threads, self.device.index)
        return self._kernels[entry]

    def check_arguments(self, bound) -> None:
        check_vector_access({name: getattr(bound, name) for name in ("q", "k", "v", "out", "dout")}, bound.signature,
                            self._checked)
        if bound.workspace is not None and bound.workspace.ptr % ALIGN:
            raise InvalidArguments("workspace", f"base address is not {ALIGN}-byte aligned")

    def _block(self, bound, grads: dict) -> params.ParamBlock:
        desc = self.desc
        check_vector_strides({name: grads[name] for name in ("dq", "dk", "dv")})
        total_q = bound.q.shape[0] if desc.layout == "thd" else desc.batch * desc.seqlen_q
        fixed = layout_values(desc, bound, bound.out, bound.lse)
        fixed.update(backward_layout_values(desc, bound, grads))
        fixed.update(workspace_strides(desc, total_q))
        per_call = tuple(pointer_values(bound, bound.out, bound.lse)) + tuple(backward_pointer_values(bound, grads))
        return params.ParamBlock(self.struct, fixed, per_call)

    def __call__(self, bound, dq, dk, dv, dsink) -> None:
        import cupy

        desc = self.desc                 # arguments: checked by Plan.can_implement through check_arguments
        grads = {"dq": dq, "dk": dk, "dv": dv, "dsink_logits": dsink}
        block = self._blocks.get(bound.signature, self._block, bound, grads)
        check_vector_pointers({"dq": dq, "dk": dk, "dv": dv})
        handle = stream_handle(bound.stream, bound.q.origin)
        total_q = bound.q.shape[0] if desc.layout == "thd" else desc.batch * desc.seqlen_q
        with cupy.cuda.Device(self.device.index), _cupy_stream(cupy, handle, self.device.index):
            # the caller's (size-checked) or the one this runner keeps for the stream: no allocation once warm
            workspace, base = self.workspaces.acquire(self.device.index, handle, self.layout.total, bound.workspace)
            values = pointer_values(bound, bound.out, bound.lse)
            values.update(backward_pointer_values(bound, grads))
            values["delta"] = base
            values["dq_accum"] = 0 if desc.deterministic else base + self.layout.dq_accum_offset
            filled = block.fill(values)

            aux_grid = (math.ceil(desc.seqlen_q / AUX_ROWS), desc.heads_q, desc.batch)
            launcher.launch(self._kernel(PREPROCESS_KERNEL), aux_grid, filled, handle)
            main_grid = (math.ceil(desc.seqlen_kv / self.key.tiles.block_n), desc.heads_kv, desc.batch)
            launcher.launch(self._kernel(BACKWARD_KERNEL), main_grid, filled, handle)
            if desc.deterministic:
                dq_grid = (math.ceil(desc.seqlen_q / self.key.dq_tiles.block_m), desc.heads_q, desc.batch)
                launcher.launch(self._kernel(DQ_KERNEL), dq_grid, filled, handle)
            else:
                launcher.launch(self._kernel(DQ_CONVERT_KERNEL), aux_grid, filled, handle)
            if dsink is not None:
                self._sink_gradient(bound, dsink, base, total_q, workspace, cupy)

    def _sink_gradient(self, bound, dsink, base: int, total_q: int, owner, cupy) -> None:
        desc = self.desc
        shape = lse_shape(desc, total_q)
        memory = cupy.cuda.UnownedMemory(base, self.layout.delta_bytes, owner)
        delta = cupy.ndarray(shape, dtype=cupy.float32, memptr=cupy.cuda.MemoryPointer(memory, 0))
        lse = bound.lse.data.astype(cupy.float64)
        sink = bound.sink_logits.data.astype(cupy.float64)
        sink = sink[:, None] if desc.layout == "thd" else sink[None, :, None]
        finite = cupy.isfinite(lse)
        weight = cupy.where(finite, cupy.exp(sink - cupy.where(finite, lse, 0.0)), 0.0)
        axes = (1,) if desc.layout == "thd" else (0, 2)
        dsink.data[...] = (-(weight * delta).sum(axis=axes)).astype(dsink.data.dtype)
