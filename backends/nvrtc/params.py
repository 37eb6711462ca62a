"""The launch parameter blocks shared by Python and the CUDA kernels.

A `StructLayout` (a struct name and a list of fields) is the single source of truth: the C struct
the kernels see is generated from it (`c_struct`) and prepended to the NVRTC source, and the host
packs the same fields with ctypes at the same offsets.  Scalar fields are 8 bytes wide; an `Opaque`
field (a CUtensorMap: 128 bytes, 64-byte aligned) is raw bytes of a given size and alignment, placed
by the C rules (offset a multiple of its alignment, size a multiple of the largest alignment), which
the host layout spells out with explicit padding so that the two cannot drift apart.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import ctypes
from typing import Union

import attrs


@attrs.frozen
class Opaque:
    """A field the host passes as raw bytes, e.g. Opaque(128, 64) for a CUtensorMap."""

    size: int
    align: int = 1

    def __attrs_post_init__(self):
        if self.size <= 0 or self.align <= 0 or self.align & (self.align - 1):
            raise ValueError(f"opaque field of {self.size} bytes aligned to {self.align}: size must be positive "
                             f"and the alignment a power of two")


# A field's kind: "ptr" (device pointer), "i64", "f64", or Opaque(size, align).
Kind = Union[str, Opaque]
SCALAR_BYTES = 8
_C_TYPES = {"ptr": "void*", "i64": "long long", "f64": "double"}
_CTYPES = {"ptr": ctypes.c_uint64, "i64": ctypes.c_int64, "f64": ctypes.c_double}


def _size_align(kind: Kind) -> tuple[int, int]:
    return (kind.size, kind.align) if isinstance(kind, Opaque) else (SCALAR_BYTES, SCALAR_BYTES)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


_STRUCT_CLASSES: dict = {}


@attrs.frozen
class StructLayout:
    """One parameter struct: its C name and its fields, (name, kind) in declaration order."""

    name: str
    fields: tuple = attrs.field(converter=tuple)

    def extended(self, extra_fields) -> "StructLayout":
        """This struct with `extra_fields` appended (a generation's own fields after the shared ones)."""
        return attrs.evolve(self, fields=self.fields + tuple(extra_fields))

    @property
    def names(self) -> frozenset:
        return frozenset(name for name, _ in self.fields)

    @property
    def alignment(self) -> int:
        return max(_size_align(kind)[1] for _, kind in self.fields)

    @property
    def offsets(self) -> dict[str, int]:
        """Byte offset of every field, by the C layout rules."""
        offsets, at = {}, 0
        for name, kind in self.fields:
            size, align = _size_align(kind)
            offsets[name] = at = _round_up(at, align)
            at += size
        return offsets

    @property
    def size(self) -> int:
        """sizeof the struct: past its last field, rounded up to its alignment."""
        name, kind = self.fields[-1]
        return _round_up(self.offsets[name] + _size_align(kind)[0], self.alignment)

    def c_struct(self) -> str:
        """The C definition of the struct."""
        lines = [f"struct {self.name} {{"]
        for name, kind in self.fields:
            if isinstance(kind, Opaque):
                lines.append(f"  alignas({kind.align}) unsigned char {name}[{kind.size}];")
            else:
                lines.append(f"  {_C_TYPES[kind]} {name};")
        lines.append("};")
        return "\n".join(lines) + "\n"

    def struct_class(self) -> type[ctypes.Structure]:
        """The ctypes twin of the C struct: the same offsets, the padding written out."""
        if self not in _STRUCT_CLASSES:
            ctypes_fields, at = [], 0
            for name, kind in self.fields:
                offset = self.offsets[name]
                if offset > at:
                    ctypes_fields.append((f"_pad_{name}", ctypes.c_ubyte * (offset - at)))
                size, _ = _size_align(kind)
                ctypes_fields.append((name, ctypes.c_ubyte * size if isinstance(kind, Opaque) else _CTYPES[kind]))
                at = offset + size
            if self.size > at:
                ctypes_fields.append(("_pad_end", ctypes.c_ubyte * (self.size - at)))
            made = type(self.name, (ctypes.Structure,), {"_fields_": ctypes_fields})
            assert ctypes.sizeof(made) == self.size, (self.name, ctypes.sizeof(made), self.size)
            _STRUCT_CLASSES[self] = made
        return _STRUCT_CLASSES[self]

    def check_names(self, names, what: str = "") -> None:
        unknown = set(names) - self.names
        if unknown:
            raise KeyError(f"unknown {what or self.name} kernel parameters: {sorted(unknown)}")

    def opaque_fields(self) -> dict[str, tuple[int, int]]:
        """(offset, size) of every opaque field."""
        offsets = self.offsets
        return {name: (offsets[name], kind.size) for name, kind in self.fields if isinstance(kind, Opaque)}

    def pack(self, values: dict) -> ctypes.Structure:
        """A ctypes struct with `values` set; fields not in `values` (and the padding) are zero."""
        self.check_names(values)
        block = self.struct_class()()
        _set(block, values, self.opaque_fields())
        return block


def _set(block: ctypes.Structure, values: dict, opaque: dict) -> None:
    """Set fields of `block`: scalars by value, the `opaque` ones (name -> (offset, size)) from exactly
    their size in bytes."""
    for name, value in values.items():
        if name in opaque:
            offset, size = opaque[name]
            raw = bytes(value)
            if len(raw) != size:
                raise ValueError(f"kernel parameter {name}: {len(raw)} bytes given, the field holds {size}")
            ctypes.memmove(ctypes.addressof(block) + offset, raw, size)
        else:
            setattr(block, name, value)


# The fields of launch_params.py (pointers, element strides, problem scalars): the structs of the
# sm80 kernels, and the base a later generation extends with its own (TMA descriptors as Opaque).
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

STANDARD = {
    "forward": StructLayout("FwdParams", _COMMON_FIELDS),
    "backward": StructLayout("BwdParams", _COMMON_FIELDS + _BACKWARD_EXTRA),
}


def c_struct(direction: str) -> str:
    """The C definition of the standard parameter struct for `direction`."""
    return STANDARD[direction].c_struct()


class ParamBlock:
    """A parameter struct whose layout fields are filled once; `fill` copies it and sets only the
    per-call fields (addresses, seed), so a repeated launch builds no dict of every field."""

    def __init__(self, layout: StructLayout, fixed: dict, per_call_names):
        layout.check_names(per_call_names)
        self.per_call_names = frozenset(per_call_names)
        self._struct = layout.struct_class()
        self._opaque = layout.opaque_fields()
        self._template = bytes(layout.pack(fixed))

    def fill(self, per_call: dict) -> ctypes.Structure:
        if not self.per_call_names.issuperset(per_call):
            raise KeyError(f"not per-call kernel parameters: {sorted(set(per_call) - self.per_call_names)}")
        block = self._struct.from_buffer_copy(self._template)
        _set(block, per_call, self._opaque)
        return block
