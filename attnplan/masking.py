"""The visibility rule of docs/semantics.md, for array code (the kernels have kernels/mask.cuh)."""

from __future__ import annotations

from .descriptor import AttentionDescriptor


def alignment_offset(desc: AttentionDescriptor, seqlen_q: int, seqlen_kv: int) -> int:
    """`off` of the semantics: row i's diagonal sits at key i + off."""
    return seqlen_kv - seqlen_q if desc.causal_alignment == "bottom_right" else 0


def visible(desc: AttentionDescriptor, rows, cols, seqlen_q: int, seqlen_kv: int, xp):
    """Boolean mask [len(rows), len(cols)]: may row i (query) see column j (key)?"""
    diagonal = rows[:, None] + alignment_offset(desc, seqlen_q, seqlen_kv)
    j = cols[None, :]
    causal_ok = (j <= diagonal) if desc.causal else xp.ones_like(j, dtype=bool)
    left, right = desc.window
    window_ok = causal_ok
    if left >= 0:
        window_ok = window_ok & (j >= diagonal - left)
    if right >= 0:
        window_ok = window_ok & (j <= diagonal + right)
    if desc.sink_tokens:
        window_ok = window_ok | (causal_ok & (j < desc.sink_tokens))
    return window_ok & (j < seqlen_kv)
