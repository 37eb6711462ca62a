"""Per-sequence views of layout-specific tensors: every layout as `[seq, heads, dim]` slices.

Used by the reference backend (and by tests) so that the math is written once for one
sequence, whatever the layout (`bshd`, `bhsd`, `thd`) or KV storage (dense or paged).
"""

from __future__ import annotations

from typing import Iterator, Optional

import attrs
import numpy as np

from .descriptor import AttentionDescriptor


@attrs.frozen
class SequenceSpan:
    """Sequence `index`: its query rows and key columns, and where they live."""

    index: int
    seqlen_q: int
    seqlen_kv: int
    q_start: int = 0                        # first row for `thd` q-like tensors
    kv_start: int = 0                       # first row for `thd` kv tensors
    pages: Optional[np.ndarray] = None      # page ids for paged KV


def spans(desc: AttentionDescriptor, total_q: int, total_kv: int, cu_seqlens_q=None,
          cu_seqlens_kv=None, seqlens_kv=None, block_table=None) -> Iterator[SequenceSpan]:
    """One span per sequence; index arrays are host NumPy arrays."""
    for b in range(desc.batch):
        q_start, seqlen_q = 0, desc.seqlen_q
        if desc.varlen:
            q_start, seqlen_q = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1] - cu_seqlens_q[b])
        kv_start, seqlen_kv, pages = 0, desc.seqlen_kv, None
        if desc.paged is not None:
            seqlen_kv = int(seqlens_kv[b])
            pages = np.asarray(block_table[b, : -(-seqlen_kv // desc.paged.page_size)], dtype=np.int64)
        elif desc.varlen:
            kv_start, seqlen_kv = int(cu_seqlens_kv[b]), int(cu_seqlens_kv[b + 1] - cu_seqlens_kv[b])
        yield SequenceSpan(b, seqlen_q, seqlen_kv, q_start, kv_start, pages)


def q_view(desc: AttentionDescriptor, array, span: SequenceSpan):
    """`[seqlen_q, heads, dim]` view of a q-like tensor (q, out, dout, dq)."""
    if desc.layout == "thd":
        return array[span.q_start: span.q_start + span.seqlen_q]
    if desc.layout == "bhsd":
        return array[span.index].transpose(1, 0, 2)
    return array[span.index]


def kv_view(desc: AttentionDescriptor, array, span: SequenceSpan):
    """`[seqlen_kv, heads_kv, dim]` view (a gathered copy for paged KV) of k, v, dk or dv."""
    if desc.paged is not None:
        gathered = array[span.pages]
        return gathered.reshape((-1,) + gathered.shape[2:])[: span.seqlen_kv]
    if desc.layout == "thd":
        return array[span.kv_start: span.kv_start + span.seqlen_kv]
    if desc.layout == "bhsd":
        return array[span.index].transpose(1, 0, 2)
    return array[span.index]


def lse_view(desc: AttentionDescriptor, lse, span: SequenceSpan):
    """`[heads_q, seqlen_q]` view of the LSE tensor."""
    if desc.layout == "thd":
        return lse[:, span.q_start: span.q_start + span.seqlen_q]
    return lse[span.index]
