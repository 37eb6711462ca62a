"""The launch parameter blocks shared by Python and the CUDA kernels.

One list of fields per kernel direction is the single source of truth: the C
struct the kernels see is generated from it (``c_struct``) and prepended to the
NVRTC source, and the host packs the same fields with ctypes (``pack``).  Every
field is 8 bytes wide so the C and ctypes layouts cannot drift apart through
padding rules.
"""

from __future__ import annotations

import ctypes

# (name, kind); kind is "ptr" (device pointer), "i64" or "f64".
_COMMON_FIELDS: tuple[tuple[str, str], ...] = (
    ("q", "ptr"), ("k", "ptr"), ("v", "ptr"), ("out", "ptr"), ("lse", "ptr"),
    ("alibi_slopes", "ptr"), ("sink_logits", "ptr"),
    ("cu_seqlens_q", "ptr"), ("cu_seqlens_kv", "ptr"),
    ("block_table", "ptr"), ("seqlens_kv", "ptr"),
    # Strides are in elements.  For `thd` the batch strides are 0 and rows are
    # offset by cu_seqlens; for paged KV the k/v batch stride is the page stride.
    ("q_batch_stride", "i64"), ("q_row_stride", "i64"), ("q_head_stride", "i64"),
    ("k_batch_stride", "i64"), ("k_row_stride", "i64"), ("k_head_stride", "i64"),
    ("v_batch_stride", "i64"), ("v_row_stride", "i64"), ("v_head_stride", "i64"),
    ("o_batch_stride", "i64"), ("o_row_stride", "i64"), ("o_head_stride", "i64"),
    ("lse_batch_stride", "i64"), ("lse_head_stride", "i64"), ("lse_row_stride", "i64"),
    ("alibi_batch_stride", "i64"), ("block_table_batch_stride", "i64"),
    ("batch", "i64"), ("seqlen_q", "i64"), ("seqlen_kv", "i64"),
    ("heads_q", "i64"), ("heads_kv", "i64"),
    ("window_left", "i64"), ("window_right", "i64"), ("sink_tokens", "i64"),
    ("top_left", "i64"), ("page_size", "i64"),
    ("dropout_threshold", "i64"), ("dropout_seed", "i64"),
    ("scale", "f64"), ("softcap", "f64"), ("dropout_scale", "f64"),
)

_BACKWARD_EXTRA: tuple[tuple[str, str], ...] = (
    ("dout", "ptr"), ("dq", "ptr"), ("dk", "ptr"), ("dv", "ptr"),
    ("dsink_logits", "ptr"), ("delta", "ptr"), ("dq_accum", "ptr"),
    ("do_batch_stride", "i64"), ("do_row_stride", "i64"), ("do_head_stride", "i64"),
    ("dq_batch_stride", "i64"), ("dq_row_stride", "i64"), ("dq_head_stride", "i64"),
    ("dk_batch_stride", "i64"), ("dk_row_stride", "i64"), ("dk_head_stride", "i64"),
    ("dv_batch_stride", "i64"), ("dv_row_stride", "i64"), ("dv_head_stride", "i64"),
    # Workspace views (element strides): delta fp32 [batch][heads_q][seqlen_q] (varlen: [heads_q][total_q]),
    # the dQ accumulator fp32 [batch][seqlen_q][heads_q][head_dim] (varlen: [total_q][heads_q][head_dim]).
    ("delta_batch_stride", "i64"), ("delta_head_stride", "i64"),
    ("dqa_batch_stride", "i64"), ("dqa_row_stride", "i64"), ("dqa_head_stride", "i64"),
)

FIELDS = {
    "forward": _COMMON_FIELDS,
    "backward": _COMMON_FIELDS + _BACKWARD_EXTRA,
}
STRUCT_NAMES = {"forward": "FwdParams", "backward": "BwdParams"}

_C_TYPES = {"ptr": "void*", "i64": "long long", "f64": "double"}
_CTYPES = {"ptr": ctypes.c_uint64, "i64": ctypes.c_int64, "f64": ctypes.c_double}


def c_struct(direction: str) -> str:
    """The C definition of the parameter struct for `direction`."""
    lines = [f"struct {STRUCT_NAMES[direction]} {{"]
    lines += [f"  {_C_TYPES[kind]} {name};" for name, kind in FIELDS[direction]]
    lines.append("};")
    return "\n".join(lines) + "\n"


_STRUCT_CLASSES: dict[str, type[ctypes.Structure]] = {}


def struct_class(direction: str) -> type[ctypes.Structure]:
    if direction not in _STRUCT_CLASSES:
        _STRUCT_CLASSES[direction] = type(
            STRUCT_NAMES[direction],
            (ctypes.Structure,),
            {"_fields_": [(name, _CTYPES[kind]) for name, kind in FIELDS[direction]]},
        )
    return _STRUCT_CLASSES[direction]


def pack(direction: str, values: dict) -> ctypes.Structure:
    """A ctypes struct for `direction`; fields not in `values` are zero."""
    names = {name for name, _ in FIELDS[direction]}
    unknown = set(values) - names
    if unknown:
        raise KeyError(f"unknown {direction} kernel parameters: {sorted(unknown)}")
    return struct_class(direction)(**values)


class ParamBlock:
    """A parameter struct whose layout fields are filled once; `fill` copies it and sets only the
    per-call fields (addresses, seed), so a repeated launch builds no dict of every field."""

    def __init__(self, direction: str, fixed: dict, per_call_names):
        names = {name for name, _ in FIELDS[direction]}
        unknown = set(per_call_names) - names
        if unknown:
            raise KeyError(f"unknown {direction} kernel parameters: {sorted(unknown)}")
        self.per_call_names = frozenset(per_call_names)
        self._struct = struct_class(direction)
        self._template = bytes(pack(direction, fixed))

    def fill(self, per_call: dict) -> ctypes.Structure:
        if not self.per_call_names.issuperset(per_call):
            raise KeyError(f"not per-call kernel parameters: {sorted(set(per_call) - self.per_call_names)}")
        block = self._struct.from_buffer_copy(self._template)
        for name, value in per_call.items():
            setattr(block, name, value)
        return block
