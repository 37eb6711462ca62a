"""How attnplan's semantics map onto cuDNN's SDPA graph attributes.

Pure functions of the descriptor and of tensor strides: no cuDNN, no GPU.  Everything cuDNN
cannot express exactly is rejected here with a reason; what it can express is turned into
`MaskSpec` (diagonal alignment and band bounds) and into cuDNN's logical `[b, h, s, d]`
dims and strides.
"""

from __future__ import annotations

from typing import Optional

import attrs

from attnplan.descriptor import AttentionDescriptor

# cuDNN 9.6 is the first with GQA + ragged (THD) offsets in the SDPA graphs and bottom-right
# alignment without the s % 64 restriction; older libraries are reported as a reason.
MIN_BACKEND_VERSION = 90600
MIN_BACKEND_TEXT = "9.6.0"


def version_text(version: int) -> str:
    """cuDNN 9 encodes versions as major * 10000 + minor * 100 + patch."""
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"

Q_LIKE = ("q", "o", "do", "dq")
KV_LIKE = ("k", "v", "dk", "dv")
_HEAD_DIM_V_ROLES = ("v", "o", "do", "dv")


# cuDNN versions that compute a wrong result for a feature combination we would otherwise map:
# (the first good version, the combination's test, the reason).
VARLEN_SINK_BACKWARD_FIXED = 92600      # cuDNN 9.26.0


def version_reasons(desc: AttentionDescriptor, version: int) -> list[str]:
    """Reasons to refuse `desc` on cuDNN `version` (major * 10000 + minor * 100 + patch) although it
    builds the graph: known wrong results, fixed in a later release."""
    if (desc.direction == "backward" and desc.varlen and desc.sink_logits
            and version < VARLEN_SINK_BACKWARD_FIXED):
        return [f"cuDNN {version_text(version)} computes a wrong dSink for the varlen backward with sink logits at some head dims "
                f"(TransformerEngine issue 3249; fixed in cuDNN 9.26): needs cuDNN >= 9.26"]
    return []


def semantic_reasons(desc: AttentionDescriptor) -> list[str]:
    """Features whose attnplan semantics cuDNN's SDPA graph cannot reproduce exactly."""
    reasons = []
    if desc.sink_tokens > 0:
        reasons.append("sink tokens: cuDNN's diagonal band applies to every key; it has no 'first N keys ignore "
                       "the window' exception")
    if desc.alibi:
        reasons.append("ALiBi: cuDNN's use_alibi_mask derives its own fixed slopes from heads_q (and needs a "
                       "causal top-left band); attnplan's slopes are given at run time, so results could not match")
    if desc.softcap > 0:
        reasons.append("softcap: cuDNN's SDPA graph has no tanh soft-capping attribute (a score_mod callback "
                       "would switch off its masks, padding and ragged support)")
    return reasons


@attrs.frozen
class MaskSpec:
    """cuDNN's masking: a diagonal band aligned top-left (diagonal j == i) or bottom-right
    (j == i + seqlen_kv - seqlen_q, per sequence with a padding mask); key j is visible when
    `i + shift - left_bound < j <= i + shift + right_bound` (None: unbounded)."""

    alignment: str                  # "top_left" or "bottom_right"
    left_bound: Optional[int]       # cuDNN's left bound (>= 1): attnplan's window left + 1
    right_bound: Optional[int]      # cuDNN's right bound (>= 0): 0 for causal
    padding: bool                   # per-sequence lengths (varlen or paged)


def mask_spec(desc: AttentionDescriptor) -> MaskSpec:
    """attnplan's causal / window / alignment as cuDNN's diagonal band.

    attnplan: key j is visible to row i when j <= i + off (causal), j >= i + off - left and
    j <= i + off + right (window), off = seqlen_kv - seqlen_q (bottom_right) or 0 (top_left).
    cuDNN: visible when j > i + shift - left_bound and j <= i + shift + right_bound, shift from
    its alignment.  So right_bound = 0 (causal) or right, left_bound = left + 1.
    """
    left, right = desc.window
    per_sequence = desc.varlen or desc.paged is not None
    banded = desc.causal or desc.has_window
    alignment = "top_left"
    if banded and desc.causal_alignment == "bottom_right":
        # With one fixed length pair and seqlen_q == seqlen_kv the two alignments coincide; top-left
        # is what cuDNN supports in the most combinations (dropout, every arch).
        same = not per_sequence and desc.seqlen_q == desc.seqlen_kv
        alignment = "top_left" if same else "bottom_right"
    right_bound = 0 if desc.causal else (right if right >= 0 else None)
    left_bound = left + 1 if left >= 0 else None
    off = desc.seqlen_kv - desc.seqlen_q
    if (alignment == "bottom_right" and desc.dropout_p > 0 and not per_sequence and off >= 0
            and left_bound is None):
        # cuDNN has no bottom-right band with dropout; with one fixed length pair the same band is a
        # top-left one shifted right by off (j <= i + off + right), which it does support.
        alignment, right_bound = "top_left", right_bound + off
    # cuDNN takes a bottom-right band with seqlen_q > seqlen_kv only with per-sequence lengths, so
    # dense problems of that shape run with a padding mask of constant lengths.
    padding = per_sequence or (alignment == "bottom_right" and desc.seqlen_q > desc.seqlen_kv)
    return MaskSpec(alignment, left_bound, right_bound, padding)


# -- tensor geometry --------------------------------------------------------------------------

def our_shape(desc: AttentionDescriptor, role: str, rows: int = 1, num_pages: int = 1) -> tuple:
    """The attnplan-layout shape of a tensor role (`rows`: total tokens for thd)."""
    q_like = role in Q_LIKE
    heads = desc.heads_q if q_like else desc.heads_kv
    dim = desc.head_dim_v if role in _HEAD_DIM_V_ROLES else desc.head_dim
    if not q_like and desc.paged is not None:
        return (num_pages, desc.paged.page_size, heads, dim)
    if desc.layout == "thd":
        return (rows, heads, dim)
    seqlen = desc.seqlen_q if q_like else desc.seqlen_kv
    if desc.layout == "bhsd":
        return (desc.batch, heads, seqlen, dim)
    return (desc.batch, seqlen, heads, dim)


def contiguous_strides(shape: tuple) -> tuple:
    strides, step = [], 1
    for extent in reversed(shape):
        strides.append(step)
        step *= max(int(extent), 1)
    return tuple(reversed(strides))


def canonical_strides(desc: AttentionDescriptor, role: str) -> tuple:
    """Strides (elements) of a densely packed tensor of `role` in attnplan's layout."""
    return contiguous_strides(our_shape(desc, role))


def bias_strides(shape: tuple, strides: tuple) -> tuple:
    """The geometry of a bias `[batch or 1, heads_q or 1, seqlen_q, seqlen_kv]`: its strides, 0 where
    it broadcasts (batch and head extents of 1)."""
    return tuple(0 if axis < 2 and extent == 1 else int(stride)
                 for axis, (extent, stride) in enumerate(zip(shape, strides)))


def bias_layout(desc: AttentionDescriptor, strides: tuple) -> tuple[list, list]:
    """cuDNN's dims and strides of the bias of geometry `strides` (bias_strides)."""
    dims = [desc.batch if strides[0] else 1, desc.heads_q if strides[1] else 1, desc.seqlen_q, desc.seqlen_kv]
    dense = contiguous_strides(dims)
    return dims, [int(s) if s else d for s, d in zip(strides, dense)]


def cudnn_layout(desc: AttentionDescriptor, role: str, strides: tuple, num_pages: int = 0) -> tuple[list, list]:
    """cuDNN's logical dims `[b, h, s, d]` and element strides for a tensor of `role` whose
    attnplan-layout strides are `strides` (paged caches: `[pages, h, page_size, d]`; thd: the
    batch stride is a placeholder, the ragged offsets place each sequence)."""
    q_like = role in Q_LIKE
    heads = desc.heads_q if q_like else desc.heads_kv
    dim = desc.head_dim_v if role in _HEAD_DIM_V_ROLES else desc.head_dim
    seqlen = desc.seqlen_q if q_like else desc.seqlen_kv
    strides = tuple(int(s) for s in strides)
    if not q_like and desc.paged is not None:
        s_page, s_row, s_head, s_dim = strides
        return [num_pages, heads, desc.paged.page_size, dim], [s_page, s_head, s_row, s_dim]
    if desc.layout == "thd":
        s_tok, s_head, s_dim = strides
        return [desc.batch, heads, seqlen, dim], [seqlen * s_tok, s_head, s_tok, s_dim]
    if desc.layout == "bhsd":
        return [desc.batch, heads, seqlen, dim], list(strides)
    s_batch, s_seq, s_head, s_dim = strides
    return [desc.batch, heads, seqlen, dim], [s_batch, s_head, s_seq, s_dim]


def is_ragged(desc: AttentionDescriptor, role: str) -> bool:
    """thd tensors are ragged (per-sequence offsets); paged caches are not."""
    if desc.layout != "thd":
        return False
    return role in Q_LIKE or desc.paged is None


def stats_layout(desc: AttentionDescriptor) -> tuple[list, list]:
    """cuDNN's softmax stats: natural-log LSE, fp32 `[b, h_q, s_q, 1]`, densely packed (for thd a
    padded per-sequence buffer that attnplan's `[heads_q, total_q]` LSE is gathered from)."""
    dims = [desc.batch, desc.heads_q, desc.seqlen_q, 1]
    return dims, list(contiguous_strides(dims))


@attrs.frozen
class Geometry:
    """What, besides the descriptor, a cuDNN graph is built for: the strides of every tensor
    (attnplan layout, elements), the page count and block-table row stride of paged KV, and
    whether softmax stats are produced (forward)."""

    strides: tuple                  # ((role, strides), ...) sorted by role
    num_pages: int = 0
    table_stride: int = 0
    stats: bool = False

    def of(self, role: str) -> tuple:
        return dict(self.strides)[role]


def forward_roles() -> tuple:
    return ("q", "k", "v", "o")


def backward_roles() -> tuple:
    return ("q", "k", "v", "o", "do", "dq", "dk", "dv")


def canonical_geometry(desc: AttentionDescriptor) -> Geometry:
    """The geometry of densely packed tensors: what Plan.select builds and sizes the workspace for."""
    roles = backward_roles() if desc.direction == "backward" else forward_roles()
    strides = [(role, canonical_strides(desc, role)) for role in roles]
    if desc.bias:
        strides.append(("bias", contiguous_strides((desc.batch, desc.heads_q, desc.seqlen_q, desc.seqlen_kv))))
    strides = tuple(sorted(strides))
    num_pages = table_stride = 0
    if desc.paged is not None:
        num_pages = desc.batch * desc.paged.max_pages_per_seq
        table_stride = desc.paged.max_pages_per_seq
    return Geometry(strides, num_pages, table_stride, desc.direction == "forward" and desc.return_lse)


def make_geometry(desc: AttentionDescriptor, strides: dict, num_pages: int = 0, table_stride: int = 0,
                  stats: bool = False) -> Geometry:
    return Geometry(tuple(sorted((r, tuple(int(x) for x in s)) for r, s in strides.items())), int(num_pages),
                    int(table_stride), bool(stats))
