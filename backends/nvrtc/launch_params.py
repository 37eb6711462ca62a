"""From bound arguments to the kernel parameter block (strides per layout, feature scalars)."""

from __future__ import annotations

from attnplan.arguments import BoundArguments
from attnplan.descriptor import AttentionDescriptor
from attnplan.errors import InvalidArguments
from attnplan.interop import Tensor
from attnplan.layout_cache import LayoutCache
from attnplan.philox import dropout_threshold


# The kernels move 16-byte vectors: base pointers 16-byte aligned, outer strides multiples of 8.
VECTOR_BYTES = 16
VECTOR_ELEMENTS = 8


def check_vector_strides(tensors: dict) -> None:
    """InvalidArguments naming the first tensor (name -> Tensor or None) whose outer strides the
    kernels cannot step with 16-byte vectors (a layout fact: checked once per signature)."""
    for name, t in tensors.items():
        if t is not None and any(s % VECTOR_ELEMENTS for s in t.strides[:-1]):
            raise InvalidArguments(name, f"outer strides {list(t.strides[:-1])} must be multiples of "
                                         f"{VECTOR_ELEMENTS} elements for this kernel")


def check_vector_pointers(tensors: dict) -> None:
    """InvalidArguments naming the first tensor whose base address is not 16-byte aligned."""
    for name, t in tensors.items():
        if t is not None and t.ptr % VECTOR_BYTES:
            raise InvalidArguments(name, f"base address is not {VECTOR_BYTES}-byte aligned (needed by the kernel)")


def check_vector_access(tensors: dict, signature, strides_checked: LayoutCache) -> None:
    """Both checks; the stride check once per argument signature."""
    check_vector_pointers(tensors)
    strides_checked.get(signature, check_vector_strides, tensors)


def _pointer(t) -> int:
    return 0 if t is None else t.ptr


def sequence_strides(desc: AttentionDescriptor, t: Tensor, role: str) -> tuple[int, int, int]:
    """(batch, row, head) element strides of a q-like ("q") or kv-like ("kv") tensor.
    For paged kv the batch stride is the page stride; for `thd` it is 0."""
    s = t.strides
    if role == "kv" and desc.paged is not None:
        return s[0], s[1], s[2]
    if desc.layout == "thd":
        return 0, s[0], s[1]
    if desc.layout == "bhsd":
        return s[0], s[2], s[1]
    return s[0], s[1], s[2]


def lse_strides(desc: AttentionDescriptor, lse: Tensor | None) -> tuple[int, int, int]:
    """(batch, head, row) strides of the LSE tensor."""
    if lse is None:
        return 0, 0, 0
    s = lse.strides
    return (0, s[0], s[1]) if desc.layout == "thd" else (s[0], s[1], s[2])


def pointer_values(bound: BoundArguments, out: Tensor, lse: Tensor | None) -> dict:
    """The per-call fields of the forward parameter block: addresses and the dropout seed."""
    seed = bound.dropout_seed
    return {"q": bound.q.ptr, "k": bound.k.ptr, "v": bound.v.ptr, "out": out.ptr, "lse": _pointer(lse),
            "alibi_slopes": _pointer(bound.alibi_slopes), "sink_logits": _pointer(bound.sink_logits),
            "cu_seqlens_q": _pointer(bound.cu_seqlens_q), "cu_seqlens_kv": _pointer(bound.cu_seqlens_kv),
            "block_table": _pointer(bound.block_table), "seqlens_kv": _pointer(bound.seqlens_kv),
            "dropout_seed": seed - 2**64 if seed >= 2**63 else seed}        # stored as signed 64-bit


def layout_values(desc: AttentionDescriptor, bound: BoundArguments, out: Tensor, lse: Tensor | None) -> dict:
    """The fields fixed by the descriptor and the arguments' signature: strides and feature scalars."""
    values = {}
    for prefix, tensor, role in (("q", bound.q, "q"), ("k", bound.k, "kv"), ("v", bound.v, "kv"), ("o", out, "q")):
        batch, row, head = sequence_strides(desc, tensor, role)
        values.update({f"{prefix}_batch_stride": batch, f"{prefix}_row_stride": row, f"{prefix}_head_stride": head})
    batch, head, row = lse_strides(desc, lse)
    values.update({"lse_batch_stride": batch, "lse_head_stride": head, "lse_row_stride": row})
    if bound.alibi_slopes is not None and len(bound.alibi_slopes.shape) == 2:
        values["alibi_batch_stride"] = bound.alibi_slopes.strides[0]
    if bound.block_table is not None:
        values["block_table_batch_stride"] = bound.block_table.strides[0]
    values.update({
        "batch": desc.batch, "seqlen_q": desc.seqlen_q, "seqlen_kv": desc.seqlen_kv,
        "heads_q": desc.heads_q, "heads_kv": desc.heads_kv,
        "window_left": desc.window[0], "window_right": desc.window[1], "sink_tokens": desc.sink_tokens,
        "top_left": int(desc.causal_alignment == "top_left"),
        "page_size": desc.paged.page_size if desc.paged is not None else 0,
        "dropout_threshold": dropout_threshold(desc.dropout_p) if desc.dropout_p > 0 else 0,
        "scale": desc.scale, "softcap": desc.softcap,
        "dropout_scale": 1.0 / (1.0 - desc.dropout_p),
    })
    return values


GRADIENT_ROLES = (("dq", "q"), ("dk", "kv"), ("dv", "kv"))


def backward_pointer_values(bound: BoundArguments, grads: dict) -> dict:
    """Per-call addresses of the backward pass; `grads` maps dq/dk/dv/... to Tensors (or None)."""
    values = {name: _pointer(grads.get(name)) for name in ("dq", "dk", "dv", "dsink_logits", "delta", "dq_accum")}
    values["dout"] = bound.dout.ptr
    return values


def backward_layout_values(desc: AttentionDescriptor, bound: BoundArguments, grads: dict) -> dict:
    """Strides of dout and the gradients."""
    values = {}
    for prefix, tensor, role in (("do", bound.dout, "q"),) + tuple((n, grads[n], r) for n, r in GRADIENT_ROLES):
        batch, row, head = sequence_strides(desc, tensor, role)
        values.update({f"{prefix}_batch_stride": batch, f"{prefix}_row_stride": row, f"{prefix}_head_stride": head})
    return values
