"""A second, independent implementation of the forward semantics of docs/semantics.md.

Deliberately naive: one Python loop per (sequence, head, row, key) in float64, written from the
semantics page alone.  It shares no code with `attnplan.masking`, `attnplan.sequences` or the
reference backend; the only import from attnplan is `philox4x32`, which `test_philox.py` pins to
the Random123 known-answer vectors.  Shapes are read off the arrays, never off a descriptor, so
a mistake in `attnplan.describe` cannot hide here.

    out, lse = brute_force.attention(q, k, v, causal=True, window=(3, 0), ...)

`out` has q's layout, `lse` is `[batch, heads_q, seqlen_q]` (`[heads_q, total_q]` for `thd`);
both are float64.  Options are the keyword options of `attnplan.attention`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from attnplan.philox import philox4x32

MASK32 = 0xFFFFFFFF


def as_lists(array):
    """Nested Python lists of float64 values (fast scalar access in the loops below)."""
    return np.asarray(array).astype(np.float64).tolist()


@functools.lru_cache(maxsize=1 << 16)
def _words(seed: int, b: int, h: int, i: int, block: int) -> tuple:
    words = philox4x32((block, i, h, b), (seed & MASK32, seed >> 32))
    return tuple(int(w) for w in words)


def keep_word(seed: int, b: int, h: int, i: int, j: int) -> int:
    """The Philox word that decides dropout of element (b, h, i, j): counter (j // 4, i, h, b)."""
    return _words(seed, b, h, i, j // 4)[j % 4]


def keep(seed: int, b: int, h: int, i: int, j: int, dropout_p: float) -> bool:
    threshold = int(math.floor(dropout_p * 2.0**32))
    return keep_word(seed, b, h, i, j) >= threshold


def is_visible(i: int, j: int, seqlen_q: int, seqlen_kv: int, *, causal: bool, causal_alignment: str,
               window: tuple, sink_tokens: int) -> bool:
    """May query row i see key j (both 0-based within their sequence)?"""
    if not 0 <= j < seqlen_kv:
        return False
    diagonal = i + (seqlen_kv - seqlen_q if causal_alignment == "bottom_right" else 0)
    if causal and j > diagonal:
        return False
    left, right = window
    inside_left = left < 0 or j >= diagonal - left
    inside_right = right < 0 or j <= diagonal + right
    return (inside_left and inside_right) or j < sink_tokens


class _Sequences:
    """Per-sequence element access for every layout, dense or paged."""

    def __init__(self, q, k, v, layout, cu_seqlens_q, cu_seqlens_kv, block_table, seqlens_kv):
        self.layout = layout
        self.q, self.k, self.v = as_lists(q), as_lists(k), as_lists(v)
        self.paged = block_table is not None
        if layout == "thd":
            self.cu_q = [int(x) for x in np.asarray(cu_seqlens_q)]
            self.batch = len(self.cu_q) - 1
            self.heads_q = q.shape[1]
        elif layout == "bhsd":
            self.batch, self.heads_q, self.max_q = q.shape[0], q.shape[1], q.shape[2]
        else:
            self.batch, self.max_q, self.heads_q = q.shape[0], q.shape[1], q.shape[2]
        if self.paged:
            self.table = np.asarray(block_table).astype(np.int64).tolist()
            self.lens_kv = [int(x) for x in np.asarray(seqlens_kv)]
            self.page_size = k.shape[1]
            self.heads_kv = k.shape[2]
        elif layout == "thd":
            self.cu_kv = [int(x) for x in np.asarray(cu_seqlens_kv)]
            self.heads_kv = k.shape[1]
        elif layout == "bhsd":
            self.heads_kv, self.max_kv = k.shape[1], k.shape[2]
        else:
            self.max_kv, self.heads_kv = k.shape[1], k.shape[2]

    def seqlen_q(self, b):
        return self.cu_q[b + 1] - self.cu_q[b] if self.layout == "thd" else self.max_q

    def seqlen_kv(self, b):
        if self.paged:
            return self.lens_kv[b]
        return self.cu_kv[b + 1] - self.cu_kv[b] if self.layout == "thd" else self.max_kv

    def q_row(self, b, i, h):
        if self.layout == "thd":
            return self.q[self.cu_q[b] + i][h]
        return self.q[b][h][i] if self.layout == "bhsd" else self.q[b][i][h]

    def _kv_row(self, x, b, j, h):
        if self.paged:
            return x[self.table[b][j // self.page_size]][j % self.page_size][h]
        if self.layout == "thd":
            return x[self.cu_kv[b] + j][h]
        return x[b][h][j] if self.layout == "bhsd" else x[b][j][h]

    def k_row(self, b, j, h):
        return self._kv_row(self.k, b, j, h)

    def v_row(self, b, j, h):
        return self._kv_row(self.v, b, j, h)


def attention(q, k, v, *, causal=False, causal_alignment="bottom_right", window=(-1, -1), sink_tokens=0,
              sink_logits=None, alibi_slopes=None, softcap=0.0, scale=None, dropout_p=0.0, dropout_seed=None,
              cu_seqlens_q=None, cu_seqlens_kv=None, block_table=None, seqlens_kv=None, layout="bshd",
              max_seqlen_q=None, max_seqlen_kv=None):
    """(out, lse) in float64, per the semantics page.  max_seqlen_* are accepted and ignored."""
    seqs = _Sequences(q, k, v, layout, cu_seqlens_q, cu_seqlens_kv, block_table, seqlens_kv)
    head_dim, head_dim_v = q.shape[-1], v.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    group = seqs.heads_q // seqs.heads_kv
    slopes = None if alibi_slopes is None else as_lists(alibi_slopes)
    sinks = None if sink_logits is None else as_lists(sink_logits)
    out = np.zeros(q.shape[:-1] + (head_dim_v,))
    lse = np.full((seqs.heads_q, q.shape[0]) if layout == "thd" else (seqs.batch, seqs.heads_q, seqs.max_q), -np.inf)
    mask_rule = dict(causal=causal, causal_alignment=causal_alignment, window=tuple(window), sink_tokens=sink_tokens)

    for b in range(seqs.batch):
        seqlen_q, seqlen_kv = seqs.seqlen_q(b), seqs.seqlen_kv(b)
        offset = seqlen_kv - seqlen_q if causal_alignment == "bottom_right" else 0
        for h in range(seqs.heads_q):
            h_kv = h // group
            slope = None
            if slopes is not None:
                slope = slopes[b][h] if isinstance(slopes[0], list) else slopes[h]
            for i in range(seqlen_q):
                q_i = seqs.q_row(b, i, h)
                logits = {}
                for j in range(seqlen_kv):
                    if not is_visible(i, j, seqlen_q, seqlen_kv, **mask_rule):
                        continue
                    k_j = seqs.k_row(b, j, h_kv)
                    s = scale * sum(q_i[d] * k_j[d] for d in range(head_dim))
                    if softcap > 0:
                        s = softcap * math.tanh(s / softcap)
                    if slope is not None:
                        s = s - slope * abs(i + offset - j)
                    logits[j] = s
                terms = list(logits.values()) + ([sinks[h]] if sinks is not None else [])
                row_lse = -math.inf
                row_out = [0.0] * head_dim_v
                if terms:
                    peak = max(terms)
                    row_lse = peak + math.log(sum(math.exp(t - peak) for t in terms))
                    for j, s in logits.items():
                        p = math.exp(s - row_lse)
                        if dropout_p > 0:
                            p = p / (1.0 - dropout_p) if keep(dropout_seed, b, h, i, j, dropout_p) else 0.0
                        v_j = seqs.v_row(b, j, h_kv)
                        for d in range(head_dim_v):
                            row_out[d] += p * v_j[d]
                _store(out, lse, layout, seqs, b, h, i, row_out, row_lse)
    return out, lse


def _store(out, lse, layout, seqs, b, h, i, row_out, row_lse):
    if layout == "thd":
        row = seqs.cu_q[b] + i
        out[row, h] = row_out
        lse[h, row] = row_lse
    elif layout == "bhsd":
        out[b, h, i] = row_out
        lse[b, h, i] = row_lse
    else:
        out[b, i, h] = row_out
        lse[b, h, i] = row_lse


def keep_mask(seed: int, batch_index: int, heads: int, seqlen_q: int, seqlen_kv: int,
              dropout_p: float) -> np.ndarray:
    """Boolean keep mask `[heads, seqlen_q, seqlen_kv]` of one sequence, element by element."""
    mask = np.zeros((heads, seqlen_q, seqlen_kv), dtype=bool)
    for h in range(heads):
        for i in range(seqlen_q):
            for j in range(seqlen_kv):
                mask[h, i, j] = keep(seed, batch_index, h, i, j, dropout_p)
    return mask
