"""Running cuDNN SDPA graphs on bound arguments: pointers into a variant pack (uid -> address),
the small per-call index tensors cuDNN wants (sequence lengths, ragged offsets, dropout seed),
the LSE layout conversions, and the workspace."""

from __future__ import annotations

import contextlib
from typing import Optional

import attrs
import numpy as np

from attnplan.descriptor import AttentionDescriptor
from attnplan.errors import InvalidArguments
from attnplan.layout_cache import LayoutCache
from attnplan.streams import stream_handle

from ..workspaces import StreamWorkspaces

from . import library
from .index_arrays import IndexArrays
from .graphs import FP8_AMAX, FP8_INPUT_SCALES, GRAPHS, SOFTMAX_SCALE, BuiltGraph, GraphUnsupported
from .mapping import Geometry, bias_strides, make_geometry

ALIGN_BYTES = 16
# Roles whose addresses come straight from the call (arguments, outputs, the fp8 scales and amax).
PLAIN_ROLES = frozenset({"q", "k", "v", "o", "stats", "bias"} | set(FP8_INPUT_SCALES) | set(FP8_AMAX))
INT32_MAX = 2**31 - 1


def is_c_contiguous(shape: tuple, strides: tuple) -> bool:
    """Row-major and dense (strides in elements; extents of 1 may have any stride)."""
    if 0 in shape:
        return True
    expected = 1
    for extent, stride in zip(reversed(shape), reversed(strides)):
        if extent != 1 and stride != expected:
            return False
        expected *= extent
    return True


class _StreamRef:
    """A raw cudaStream_t seen through the CUDA stream protocol."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def on_stream(cupy, ptr: int, device_index: int):
    """A context that makes CuPy's small index kernels run on the caller's stream `ptr`."""
    if ptr == cupy.cuda.get_current_stream().ptr:
        return contextlib.nullcontext()
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(_StreamRef(ptr))
    return cupy.cuda.ExternalStream(ptr, device_index)


def on_device(cupy, device_index: int):
    """A context making `device_index` current, or nothing where it already is."""
    if cupy.cuda.runtime.getDevice() == device_index:
        return contextlib.nullcontext()
    return cupy.cuda.Device(device_index)


@attrs.frozen(eq=False)
class _Prepared:
    """A graph and how to feed it, for one argument signature.  `plain`: every address comes straight
    from the arguments (no lengths, offsets, page tables, seeds, or LSE relayout to make)."""
    built: BuiltGraph
    plain: bool
    roles: tuple                  # (uid, role) of the argument addresses, for the plain path


class CudnnRunner:
    """The forward or backward of one descriptor (one per built Executable)."""

    def __init__(self, desc: AttentionDescriptor, canonical: BuiltGraph, plan_name: Optional[str] = None):
        self.desc, self.canonical, self.plan_name = desc, canonical, plan_name
        self.workspaces = StreamWorkspaces()       # one per (device, stream), kept between calls
        self._index_arrays = IndexArrays(desc.batch)
        self._constants: dict = {}
        self._checked = LayoutCache()
        self._graphs = LayoutCache()        # argument signature -> BuiltGraph

    # -- argument checks --------------------------------------------------------------------

    @staticmethod
    def check_alignment(tensors) -> None:
        for name, t in tensors:
            if t is not None and t.is_cuda and t.ptr % ALIGN_BYTES:
                raise InvalidArguments(name, f"base address is not {ALIGN_BYTES}-byte aligned (cuDNN needs it)")

    def check_arguments(self, bound) -> None:
        self.check_alignment((name, getattr(bound, name)) for name in ("q", "k", "v", "out", "dout", "lse", "bias"))
        self._checked.get(bound.signature, self._check_layout, bound)

    def _check_layout(self, bound) -> None:
        if self.desc.layout == "thd":
            for name in ("q", "k", "v", "out", "dout"):
                t = getattr(bound, name, None)
                if t is not None and t.shape[0] * max(t.strides[0], 1) > INT32_MAX and not \
                        (name in ("k", "v") and self.desc.paged is not None):
                    raise InvalidArguments(name, "is too large for cuDNN's int32 ragged offsets")

    # -- graphs ----------------------------------------------------------------------------

    def _graph(self, device_index: int, geometry: Geometry, culprit: str) -> BuiltGraph:
        try:
            return GRAPHS.get(self.desc, device_index, geometry, self.plan_name)
        except GraphUnsupported as exc:
            raise InvalidArguments(culprit, f"cuDNN rejects a graph for these strides: {exc}") from None

    def _geometry(self, tensors: dict, bound, stats: bool) -> Geometry:
        num_pages = table_stride = 0
        if self.desc.paged is not None:
            num_pages = bound.k.shape[0]
            table_stride = bound.block_table.strides[0]
        strides = {role: t.strides for role, t in tensors.items()}
        if self.desc.bias:
            strides["bias"] = bias_strides(bound.bias.shape, bound.bias.strides)
        return make_geometry(self.desc, strides, num_pages, table_stride, stats)

    # -- per-call index tensors ------------------------------------------------------------

    def _constant_lengths(self, cupy, device_index: int, value: int):
        """A device array of `batch` copies of `value`, made once and kept."""
        key = (value, device_index)
        if key not in self._constants:
            self._constants[key] = cupy.full(self.desc.batch, value, dtype=cupy.int32)
        return self._constants[key]

    def _index_pointers(self, cupy, bound, built: BuiltGraph, keep: list, stream: int) -> dict:
        """Pointers of sequence lengths, ragged offsets, page tables, dropout seed, sink logits: the
        lengths and offsets computed in place in this stream's kept buffer (index_arrays.py)."""
        desc, ptrs = self.desc, {}
        device_index = bound.q.device_index
        kept = self._index_arrays.views(cupy, device_index, stream, len(built.offsets))

        def contiguous(t):
            array = cupy.ascontiguousarray(t.data)      # index arrays are contiguous: no copy
            keep.append(array)
            return array

        cu_q = contiguous(bound.cu_seqlens_q) if desc.varlen else None
        cu_kv = contiguous(bound.cu_seqlens_kv) if desc.varlen and desc.paged is None else None
        if "seq_q" in built.uids:
            if cu_q is not None:
                seq_q = cupy.subtract(cu_q[1:], cu_q[:-1], out=kept["seq_q"])
            else:
                seq_q = self._constant_lengths(cupy, device_index, desc.seqlen_q)
            if desc.paged is not None:
                seq_kv = contiguous(bound.seqlens_kv)
            elif cu_kv is not None:
                seq_kv = cupy.subtract(cu_kv[1:], cu_kv[:-1], out=kept["seq_kv"])
            else:
                seq_kv = self._constant_lengths(cupy, device_index, desc.seqlen_kv)
            ptrs["seq_q"], ptrs["seq_kv"] = seq_q.data.ptr, seq_kv.data.ptr
        for (key, side, stride), offsets in zip(built.offsets, kept["offsets"]):
            cu = cu_q if side == "q" else cu_kv        # within int32: _check_layout bounds rows x stride
            ptrs[key] = cupy.multiply(cu, np.int32(stride), out=offsets).data.ptr
        if desc.paged is not None and "table_k" in built.uids:
            ptrs["table_k"] = ptrs["table_v"] = bound.block_table.ptr
        if desc.dropout_p > 0:
            ptrs["seed"], ptrs["rng_offset"] = self._index_arrays.seed_pointers(cupy, kept, bound.dropout_seed, stream)
        if desc.sink_logits:
            ptrs["sink"] = contiguous(bound.sink_logits).data.ptr
        if desc.bias:
            ptrs["bias"] = bound.bias.ptr
        return ptrs

    @staticmethod
    def _token_positions(cupy, cu_q, total: int):
        """(sequence, position) of every packed query token."""
        tokens = cupy.arange(total, dtype=cupy.int32)
        seq = cupy.searchsorted(cu_q[1:], tokens, side="right").astype(cupy.int32)
        return seq, tokens - cu_q[seq]

    # -- forward ---------------------------------------------------------------------------

    def _prepare(self, device_index: int, bound, out, lse) -> _Prepared:
        tensors = {"q": bound.q, "k": bound.k, "v": bound.v, "o": out}
        built = self._graph(device_index, self._geometry(tensors, bound, lse is not None), "q")
        lse_direct = lse is None or (self.desc.layout != "thd" and is_c_contiguous(lse.shape, lse.strides))
        # Lengths, ragged offsets, page tables, dropout seeds and sink logits all add roles of their own.
        plain = lse_direct and all(role in PLAIN_ROLES for role in built.uids)
        roles = tuple((uid, role) for role, uid in built.uids.items())
        return _Prepared(built, plain, roles)

    def _fp8_pointers(self, cupy, bound, device_index: int) -> dict:
        """The fp8 graph's scales: the caller's descales / scale_o (else 1), our softmax scale, and
        where cuDNN writes amax_s (scratch) and amax_o (the caller's, else scratch)."""
        constants = self._constants.get(("fp8", device_index))
        if constants is None:                  # one, scale_s, descale_s, amax_s, amax_o: 16 bytes apart
            values = [1.0, SOFTMAX_SCALE, 1.0 / SOFTMAX_SCALE, 0.0, 0.0]
            with cupy.cuda.Device(device_index):
                constants = cupy.array([x for value in values for x in (value, 0.0, 0.0, 0.0)], dtype=cupy.float32)
            self._constants[("fp8", device_index)] = constants
        one, scale_s, descale_s, scratch_s, scratch_o = (constants.data.ptr + 16 * i for i in range(5))
        given = {name: getattr(bound, name) for name in ("descale_q", "descale_k", "descale_v", "scale_o", "amax_o")}
        pointers = {name: t.ptr if t is not None else one for name, t in given.items() if name != "amax_o"}
        pointers.update(scale_s=scale_s, descale_s=descale_s, amax_s=scratch_s,
                        amax_o=given["amax_o"].ptr if given["amax_o"] is not None else scratch_o)
        return pointers

    def _backward_graph(self, device_index: int, tensors: dict, bound) -> BuiltGraph:
        return self._graph(device_index, self._geometry(tensors, bound, False), "q")

    def forward(self, bound, out, lse) -> None:
        """(Arguments checked by Plan.can_implement through check_arguments.)"""
        import cupy

        desc = self.desc
        device_index = bound.q.device_index
        if out is not bound.out or lse is not bound.lse:      # the caller's: checked by check_arguments
            self.check_alignment((("out", out), ("lse", lse)))
        prepared = self._graphs.get(bound.signature, self._prepare, device_index, bound, out, lse)
        built = prepared.built
        stream = stream_handle(bound.stream, bound.q.origin)
        if prepared.plain:
            addresses = {"q": bound.q.ptr, "k": bound.k.ptr, "v": bound.v.ptr, "o": out.ptr,
                         "stats": lse.ptr if lse is not None else 0,
                         "bias": bound.bias.ptr if bound.bias is not None else 0}
            if desc.is_fp8:
                addresses.update(self._fp8_pointers(cupy, bound, device_index))
            pack = {uid: addresses[role] for uid, role in prepared.roles}
            workspace = self.workspaces.pointer(device_index, stream, built.workspace_size, bound.workspace)
            with on_device(cupy, device_index):
                built.run(pack, workspace, library.handle(device_index, stream))
            return
        keep: list = []
        with on_device(cupy, device_index), on_stream(cupy, stream, device_index):
            ptrs = {"q": bound.q.ptr, "k": bound.k.ptr, "v": bound.v.ptr, "o": out.ptr}
            ptrs.update(self._index_pointers(cupy, bound, built, keep, stream))
            if desc.is_fp8:
                ptrs.update(self._fp8_pointers(cupy, bound, device_index))
            stats = None                    # a separate stats buffer, where the LSE cannot take cuDNN's layout
            if lse is not None:
                if desc.layout != "thd" and is_c_contiguous(lse.shape, lse.strides):
                    ptrs["stats"] = lse.ptr
                else:
                    stats = cupy.empty((desc.batch, desc.heads_q, desc.seqlen_q), cupy.float32)
                    ptrs["stats"] = stats.data.ptr
            workspace = self.workspaces.pointer(device_index, stream, built.workspace_size, bound.workspace)
            built.execute(ptrs, workspace, library.handle(device_index, stream))
            if stats is not None:
                if desc.layout == "thd":
                    total = bound.q.shape[0]
                    if total:
                        cu_q = cupy.ascontiguousarray(bound.cu_seqlens_q.data)
                        seq, pos = self._token_positions(cupy, cu_q, total)
                        lse.data[...] = stats[seq, :, pos].T
                else:
                    lse.data[...] = stats
            if desc.varlen or desc.paged is not None:
                self._define_rows_without_keys(cupy, bound, out, lse)

    def _define_rows_without_keys(self, cupy, bound, out, lse) -> None:
        """The query rows of a sequence with no keys get out 0 and LSE -inf, or the head's sink logit
        (docs/semantics.md): cuDNN (9.19) leaves them unwritten, varlen and paged alike (found by the
        GPU fuzz on the H200, 2026-12-02).  Two elementwise kernels over out and the LSE that write
        only those rows: no allocation, no synchronisation."""
        desc = self.desc
        out_kernel, lse_kernel = _rows_without_keys_kernels(cupy)
        cumulative = desc.paged is None
        kv = (bound.cu_seqlens_kv if cumulative else bound.seqlens_kv).data
        packed = desc.layout == "thd"
        cu_q = bound.cu_seqlens_q.data if packed else kv               # (unread unless packed)
        tokens = bound.q.shape[0] if packed else 0
        if packed and not tokens:
            return
        data = out.data
        per_unit = int(np.prod(data.shape[1:]))            # a token's elements (packed), else a batch entry's
        out_kernel(cu_q, kv, np.int32(desc.batch), np.int64(per_unit), np.int32(packed), np.int32(cumulative), data)
        if lse is not None:
            sink = bound.sink_logits.data if desc.sink_logits else self._no_sink(cupy, bound.q.device_index)
            lse_kernel(cu_q, kv, sink, np.int32(desc.batch), np.int64(tokens), np.int32(desc.heads_q),
                       np.int32(desc.seqlen_q), np.int32(packed), np.int32(cumulative), np.int32(desc.sink_logits),
                       lse.data)

    def _no_sink(self, cupy, device_index: int):
        """A kept one-float array standing in for absent sink logits (an argument the kernel never reads)."""
        dummy = self._constants.get(("no_sink", device_index))
        if dummy is None:
            with cupy.cuda.Device(device_index):
                dummy = cupy.zeros(1, dtype=cupy.float32)
            self._constants[("no_sink", device_index)] = dummy
        return dummy

    # -- backward --------------------------------------------------------------------------

    def backward(self, bound, dq, dk, dv, dsink) -> None:
        import cupy

        desc = self.desc
        device_index = bound.q.device_index
        self.check_alignment((("dq", dq), ("dk", dk), ("dv", dv)))     # the rest: by Plan.can_implement
        tensors = {"q": bound.q, "k": bound.k, "v": bound.v, "o": bound.out, "do": bound.dout,
                   "dq": dq, "dk": dk, "dv": dv}
        built = self._graphs.get(bound.signature, self._backward_graph, device_index, tensors, bound)
        stream = stream_handle(bound.stream, bound.q.origin)
        keep: list = []
        with on_device(cupy, device_index), on_stream(cupy, stream, device_index):
            ptrs = {role: t.ptr for role, t in tensors.items()}
            ptrs.update(self._index_pointers(cupy, bound, built, keep, stream))
            lse = bound.lse.data
            if desc.layout == "thd":
                stats = cupy.zeros((desc.batch, desc.heads_q, desc.seqlen_q), cupy.float32)
                total = bound.q.shape[0]
                if total:
                    cu_q = cupy.ascontiguousarray(bound.cu_seqlens_q.data)
                    seq, pos = self._token_positions(cupy, cu_q, total)
                    stats[seq, :, pos] = lse.T
            else:
                stats = cupy.ascontiguousarray(lse, dtype=cupy.float32)
            keep.append(stats)
            ptrs["stats"] = stats.data.ptr
            if dsink is not None:
                dsink.data.fill(0)
                ptrs["dsink"] = dsink.ptr
            workspace = self.workspaces.pointer(device_index, stream, built.workspace_size, bound.workspace)
            built.execute(ptrs, workspace, library.handle(device_index, stream))


# Which sequence a packed query token belongs to (the last b with cu_q[b] <= token: empty sequences
# before it share its start), and whether that sequence has keys: shared by the two kernels below.
_SEQUENCE_HAS_NO_KEYS = """
template <class Starts, class Keys>
__device__ bool attn_sequence_has_no_keys(const Starts& cu_q, const Keys& kv, int batch, long long unit, int packed,
                                          int cumulative) {
  int b = (int)unit;
  if (packed) {
    int lo = 0, hi = batch;
    while (hi - lo > 1) { const int mid = (lo + hi) / 2; if (cu_q[mid] <= unit) lo = mid; else hi = mid; }
    b = lo;
  }
  const int length = cumulative ? kv[b + 1] - kv[b] : kv[b];
  return length == 0;
}
"""
_KERNELS: dict = {}


def _rows_without_keys_kernels(cupy):
    """(out kernel, LSE kernel), made once: out rows (a packed token's, or a batch entry's, `per_unit`
    elements) and LSE entries ([heads, tokens] packed, else [batch, heads, seqlen]) of sequences
    without keys get 0 and -inf (or the head's sink logit); every other element is left as it is."""
    if "rows" not in _KERNELS:
        out_kernel = cupy.ElementwiseKernel(
            "raw int32 cu_q, raw int32 kv, int32 batch, int64 per_unit, int32 packed, int32 cumulative", "T out",
            "if (attn_sequence_has_no_keys(cu_q, kv, batch, i / per_unit, packed, cumulative)) out = (T)0.0f;",
            "attn_cudnn_rows_without_keys", preamble=_SEQUENCE_HAS_NO_KEYS)
        lse_kernel = cupy.ElementwiseKernel(
            "raw int32 cu_q, raw int32 kv, raw float32 sink, int32 batch, int64 tokens, int32 heads, int32 seqlen, "
            "int32 packed, int32 cumulative, int32 has_sink", "float32 lse",
            """
            const long long unit = packed ? i % tokens : i / ((long long)heads * seqlen);
            const int head = packed ? (int)(i / tokens) : (int)((i / seqlen) % heads);
            if (attn_sequence_has_no_keys(cu_q, kv, batch, unit, packed, cumulative))
              lse = has_sink ? sink[head] : __int_as_float(0xff800000);
            """, "attn_cudnn_lse_without_keys", preamble=_SEQUENCE_HAS_NO_KEYS)
        _KERNELS["rows"] = (out_kernel, lse_kernel)
    return _KERNELS["rows"]


__all__ = ["CudnnRunner"]
