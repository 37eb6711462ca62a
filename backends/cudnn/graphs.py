"""cuDNN SDPA graphs: built once per (descriptor, device, geometry, pinned plan), cached in process.

A `BuiltGraph` is a validated, planned and built cuDNN graph plus what running it needs: the
uid of every tensor role, the workspace size, and the plan that cuDNN chose.  Failures are
cached too (as the cuDNN message), so `explain` and `Plan.select` ask cuDNN once per problem.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Optional

import attrs

from attnplan.descriptor import AttentionDescriptor

from . import library
from .mapping import Geometry, bias_layout, cudnn_layout, is_ragged, mask_spec, stats_layout

MAX_CACHED_GRAPHS = 256


class GraphUnsupported(Exception):
    """cuDNN (or the frontend) rejected the graph with its not-supported error; the message is cuDNN's own."""


class DirectExecute:
    """Runs the frontend's lowered (C++) graph by {uid: address} at the built plan's index.

    The public `graph.execute` of frontend 1.32 first normalises the variant pack in Python: about
    50 us a call on an H100, against 13 us this way, with the same output bits
    (bench/cudnn_execute_paths.py measures and checks both).  These are private frontend entry
    points, so they are looked up at build (absent: the public path is used) and given up at the
    first TypeError (a changed signature fails before anything runs).  ATTNPLAN_CUDNN_EXECUTE=public
    turns this off."""

    def __init__(self, lowered, cpp_index, to_backend_handle):
        self._lowered, self._index, self._backend_handle = lowered, cpp_index, to_backend_handle
        self.enabled = True

    def __call__(self, pack: dict, workspace: int, handle) -> bool:
        """True when it ran; False when the caller must use the public path."""
        if not self.enabled:
            return False
        try:
            if self._index is None:
                self._lowered._execute(pack, workspace, self._backend_handle(handle), None, None, None)
            else:
                self._lowered._execute_plan_at_index(pack, workspace, self._index, self._backend_handle(handle),
                                                     None, None, None)
        except TypeError:
            self.enabled = False
            return False
        return True


def direct_execute(graph) -> Optional[DirectExecute]:
    """The direct path for a built backend-engine graph, or None where this frontend has none."""
    if os.environ.get("ATTNPLAN_CUDNN_EXECUTE", "").lower() == "public":
        return None
    try:
        if getattr(graph, "selected_engine", None) is not None:     # a python engine serves the plan
            return None
        lowered = graph._lowered_graph
        if not (hasattr(lowered, "_execute_plan_at_index") and hasattr(lowered, "_execute")):
            return None
        cfg = graph._materialize_backend_plan(graph._plan_index) if graph._plans else None
        from cudnn._handle import to_backend_handle
    except Exception:
        return None
    return DirectExecute(lowered, None if cfg is None or cfg.cpp_index is None else int(cfg.cpp_index),
                         to_backend_handle)


@attrs.frozen(eq=False)
class BuiltGraph:
    graph: object
    uids: dict                 # role -> uid (q, k, v, o, stats, seq_q, off:q:<stride>, ...)
    workspace_size: int
    plan_name: str
    served_by: str             # "cudnn_backend" or the frontend's python engine name
    offsets: tuple = ()        # (role-key, side, token stride) of every ragged offset tensor
    direct: Optional[DirectExecute] = None

    def execute(self, pointers: dict, workspace: int, handle) -> None:
        """Run on `pointers` (role -> address)."""
        self.run({self.uids[role]: int(ptr) for role, ptr in pointers.items() if role in self.uids}, workspace, handle)

    def run(self, pack: dict, workspace: int, handle) -> None:
        """Run on `pack` (uid -> address)."""
        if self.direct is not None and self.direct(pack, int(workspace) if workspace else 0, handle):
            return
        self.graph.execute(pack, int(workspace) if workspace else None, handle=handle)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = " ".join(lines[:3])
    return text if len(text) <= 400 else text[:397] + "..."


def io_data_type(cudnn, dtype: str):
    return {"f16": cudnn.data_type.HALF, "bf16": cudnn.data_type.BFLOAT16, "e4m3": cudnn.data_type.FP8_E4M3,
            "e5m2": cudnn.data_type.FP8_E5M2}[dtype]


# The fp8 graph's per-tensor scales, in the role names of its uids.  descale_* and scale_o come from
# the caller (1 when not given); scale_s / descale_s (the fp8 probabilities P * SOFTMAX_SCALE before
# the P.V product) are ours; amax_s / amax_o are written by cuDNN.
FP8_INPUT_SCALES = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
FP8_AMAX = ("amax_s", "amax_o")
SOFTMAX_SCALE = 256.0       # P in [0, 1] -> [0, 256]: within e4m3's range (448), exactly invertible


class _Builder:
    """Declares the tensors of one graph, remembering their uids by role."""

    def __init__(self, cudnn, graph, desc: AttentionDescriptor, geometry: Geometry):
        self.cudnn, self.graph, self.desc, self.geometry = cudnn, graph, desc, geometry
        self.tensors: dict = {}
        self.offsets: dict = {}
        self.io = io_data_type(cudnn, desc.dtype)
        self.out = io_data_type(cudnn, desc.out_dtype)

    def aux(self, role: str, dims: list, strides: list, data_type) -> object:
        t = self.graph.tensor(name=role, dim=dims, stride=strides, data_type=data_type)
        self.tensors[role] = t
        return t

    def offset(self, side: str, token_stride: int):
        """The ragged offset tensor (elements) of sequence starts on `side` ('q' or 'kv') for a
        tensor with `token_stride`; shared by tensors of equal stride."""
        key = f"off:{side}:{token_stride}"
        if key not in self.offsets:
            self.offsets[key] = self.aux(key, [self.desc.batch + 1, 1, 1, 1], [1, 1, 1, 1],
                                         self.cudnn.data_type.INT32)
        return self.offsets[key]

    def _ragged(self, role: str, strides: tuple):
        if not is_ragged(self.desc, role):
            return None
        side = "q" if role in ("q", "o", "do", "dq") else "kv"
        return self.offset(side, int(strides[0]))

    def data(self, role: str):
        strides = self.geometry.of(role)
        dims, cudnn_strides = cudnn_layout(self.desc, role, strides, self.geometry.num_pages)
        t = self.graph.tensor(name=role, dim=dims, stride=cudnn_strides, data_type=self.io,
                              ragged_offset=self._ragged(role, strides))
        self.tensors[role] = t
        return t

    def output(self, role: str, t) -> None:
        strides = self.geometry.of(role)
        dims, cudnn_strides = cudnn_layout(self.desc, role, strides, self.geometry.num_pages)
        t.set_output(True).set_dim(dims).set_stride(cudnn_strides).set_data_type(self.out if role == "o" else self.io)
        ragged = self._ragged(role, strides)
        if ragged is not None:
            t.set_ragged_offset(ragged)
        self.tensors[role] = t

    def stats(self, t, role: str = "stats") -> None:
        dims, strides = stats_layout(self.desc)
        t.set_output(True).set_dim(dims).set_stride(strides).set_data_type(self.cudnn.data_type.FLOAT)
        self.tensors[role] = t

    def common(self) -> dict:
        """The masking, lengths, dropout and sink attributes shared by forward and backward."""
        cudnn, desc = self.cudnn, self.desc
        spec = mask_spec(desc)
        kw = {"attn_scale": float(desc.scale)}
        if desc.bias:
            kw["bias"] = self.aux("bias", *bias_layout(desc, self.geometry.of("bias")), self.io)
        if desc.causal or desc.has_window:
            kw["diagonal_alignment"] = (cudnn.diagonal_alignment.TOP_LEFT if spec.alignment == "top_left"
                                        else cudnn.diagonal_alignment.BOTTOM_RIGHT)
            if spec.left_bound is not None:
                kw["diagonal_band_left_bound"] = int(spec.left_bound)
            if spec.right_bound is not None:
                kw["diagonal_band_right_bound"] = int(spec.right_bound)
        if spec.padding:
            lengths = ([desc.batch, 1, 1, 1], [1, 1, 1, 1], cudnn.data_type.INT32)
            kw["use_padding_mask"] = True
            kw["seq_len_q"] = self.aux("seq_q", *lengths)
            kw["seq_len_kv"] = self.aux("seq_kv", *lengths)
        if desc.dropout_p > 0:
            scalar = ([1, 1, 1, 1], [1, 1, 1, 1], cudnn.data_type.INT64)
            kw["dropout"] = (float(desc.dropout_p), self.aux("seed", *scalar), self.aux("rng_offset", *scalar))
        if desc.sink_logits:
            kw["sink_token"] = self.aux("sink", [1, desc.heads_q, 1, 1], [desc.heads_q, 1, 1, 1],
                                        cudnn.data_type.FLOAT)
        return kw


def _declare_forward(b: _Builder) -> None:
    desc = b.desc
    q, k, v = b.data("q"), b.data("k"), b.data("v")
    kw = b.common()
    if desc.is_fp8:
        _declare_forward_fp8(b, q, k, v, kw)
        return
    if desc.paged is not None:
        _paged_tables(b, kw)
    o, stats = b.graph.sdpa(q=q, k=k, v=v, generate_stats=bool(b.geometry.stats), name="attnplan_sdpa", **kw)
    b.output("o", o)
    if b.geometry.stats:
        b.stats(stats)


def _declare_forward_fp8(b: _Builder, q, k, v, kw: dict) -> None:
    """cuDNN's fp8 SDPA: its band bounds are named left_bound / right_bound."""
    desc, cudnn = b.desc, b.cudnn
    scalar = ([1, 1, 1, 1], [1, 1, 1, 1], cudnn.data_type.FLOAT)
    scales = {role: b.aux(role, *scalar) for role in FP8_INPUT_SCALES}
    if desc.causal and "diagonal_band_left_bound" not in kw:
        # Plain causal: the fp8 graph's own causal flags (on Hopper cuDNN builds fp8 graphs only with
        # these, not with a diagonal band).
        top_left = kw.pop("diagonal_alignment") == cudnn.diagonal_alignment.TOP_LEFT
        kw.pop("diagonal_band_right_bound")
        kw["use_causal_mask" if top_left else "use_causal_mask_bottom_right"] = True
    for ours, theirs in (("diagonal_band_left_bound", "left_bound"), ("diagonal_band_right_bound", "right_bound")):
        if ours in kw:
            kw[theirs] = kw.pop(ours)
    if desc.paged is not None:
        _paged_tables(b, kw)
    o, stats, amax_s, amax_o = b.graph.sdpa_fp8(q=q, k=k, v=v, generate_stats=bool(b.geometry.stats),
                                                name="attnplan_sdpa_fp8", **scales, **kw)
    b.output("o", o)
    if b.geometry.stats:
        b.stats(stats)
    for role, t in (("amax_s", amax_s), ("amax_o", amax_o)):
        t.set_output(True).set_dim(scalar[0]).set_stride(scalar[1]).set_data_type(scalar[2])
        b.tensors[role] = t


def _paged_tables(b: _Builder, kw: dict) -> None:
    desc, cudnn = b.desc, b.cudnn
    table = ([desc.batch, 1, desc.paged.max_pages_per_seq, 1],
             [b.geometry.table_stride, b.geometry.table_stride, 1, 1], cudnn.data_type.INT32)
    kw["paged_attention_k_table"] = b.aux("table_k", *table)
    kw["paged_attention_v_table"] = b.aux("table_v", *table)
    kw["paged_attention_max_seq_len_kv"] = int(desc.paged.page_size * desc.paged.max_pages_per_seq)


def _declare_backward(b: _Builder) -> None:
    desc, cudnn = b.desc, b.cudnn
    q, k, v, o, do = b.data("q"), b.data("k"), b.data("v"), b.data("o"), b.data("do")
    dims, strides = stats_layout(desc)
    stats = b.aux("stats", dims, strides, cudnn.data_type.FLOAT)
    kw = b.common()
    if desc.sink_logits:
        kw["dSink_token"] = b.aux("dsink", [1, desc.heads_q, 1, 1], [desc.heads_q, 1, 1, 1], cudnn.data_type.FLOAT)
    dq, dk, dv = b.graph.sdpa_backward(q=q, k=k, v=v, o=o, dO=do, stats=stats,
                                       use_deterministic_algorithm=bool(desc.deterministic),
                                       name="attnplan_sdpa_backward", **kw)
    b.output("dq", dq)
    b.output("dk", dk)
    b.output("dv", dv)


def _plan_of(graph) -> tuple[str, str]:
    """The plan cuDNN built (name) and who serves it, as far as the frontend says."""
    index = getattr(graph, "_plan_index", 0)
    try:
        name = str(graph.get_plan_name_at_index(int(index)))
    except Exception:
        name = "unknown"
    served = "cudnn_backend"
    try:
        engine = getattr(graph, "selected_engine", None)
        if engine is not None:
            served = str(getattr(engine, "name", engine))
    except Exception:
        pass
    return name, served


def build(desc: AttentionDescriptor, device_index: int, geometry: Geometry,
          plan_name: Optional[str] = None) -> BuiltGraph:
    """Declare, validate, plan and build the graph; GraphUnsupported carries cuDNN's reason when it
    does not support the graph.  Every other exception (a bug in our declarations, a bad parameter,
    a CUDA error) is raised as it is: it is not a verdict on the problem."""
    import cupy

    cudnn = library.module()
    not_supported = library.not_supported_error()
    with cupy.cuda.Device(device_index):
        handle = library.handle(device_index)
        # Our declarations: any exception here is our bug, raised as it is.
        graph = cudnn.pygraph(io_data_type=io_data_type(cudnn, desc.dtype),
                              intermediate_data_type=cudnn.data_type.FLOAT,
                              compute_data_type=cudnn.data_type.FLOAT, handle=handle)
        builder = _Builder(cudnn, graph, desc, geometry)
        (_declare_backward if desc.direction == "backward" else _declare_forward)(builder)
        # cuDNN's judgement: its not-supported error, and the RuntimeError its C++ side raises for a graph
        # no engine takes (seen on the H200: "s_q = s_kv = 1 is not supported", "no engine ... proposed a
        # plan"), are verdicts; anything else (ValueError, TypeError, KeyError ...) is raised.
        try:
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            if plan_name is not None:
                for index in range(graph.get_execution_plan_count()):
                    if graph.get_plan_name_at_index(index) == plan_name:
                        graph.select_plan(index)
                        break
            graph.check_support()
            graph.build_plans()
            workspace = int(graph.get_workspace_size())
        except (not_supported, RuntimeError) as exc:
            raise GraphUnsupported(_first_line(exc)) from None
    name, served = _plan_of(graph)
    uids = {role: int(t.get_uid()) for role, t in builder.tensors.items()}
    offsets = tuple((key, key.split(":")[1], int(key.split(":")[2])) for key in builder.offsets)
    return BuiltGraph(graph, uids, workspace, name, served, offsets, direct_execute(graph))


class GraphCache:
    """A bounded LRU of built graphs (and of cuDNN's rejections), keyed by what decides a graph."""

    def __init__(self, capacity: int = MAX_CACHED_GRAPHS):
        self.capacity = capacity
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self.hits = self.misses = 0

    def get(self, desc: AttentionDescriptor, device_index: int, geometry: Geometry,
            plan_name: Optional[str] = None) -> BuiltGraph:
        key = (desc, device_index, geometry, plan_name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                try:
                    entry = build(desc, device_index, geometry, plan_name)
                except GraphUnsupported as exc:
                    entry = exc
                self._entries[key] = entry
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        if isinstance(entry, GraphUnsupported):
            raise entry
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


GRAPHS = GraphCache()
