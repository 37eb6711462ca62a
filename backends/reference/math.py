"""The reference math for one sequence, on float arrays of NumPy or CuPy (`xp`).

Queries are processed in chunks of rows so that memory stays O(chunk * seqlen_kv * heads).
Shapes: q `[Sq, Hq, D]`, k `[Skv, Hkv, D]`, v `[Skv, Hkv, Dv]`; heads are grouped as
`[Hkv, G, ...]` so GQA never copies K or V.
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs

from attnplan.descriptor import AttentionDescriptor
from attnplan.masking import alignment_offset, visible
from attnplan.philox import dropout_keep_mask

# Elements of one [heads, chunk, seqlen_kv] score block: 2**22 f64 values = 32 MiB.
SCORE_BLOCK_ELEMENTS = 1 << 22


@attrs.frozen(eq=False)
class SequenceInputs:
    """Float inputs of one sequence and its per-head extras."""

    index: int
    q: object
    k: object
    v: object
    slopes: Optional[object] = None       # [Hq]
    sinks: Optional[object] = None        # [Hq]
    bias: Optional[object] = None         # [Hq or 1, Sq, Skv], added to the scores
    # Rounds the operands of the second matmuls (P before P@V, dS before dS@K) the way a
    # low-precision kernel stores them; None keeps full precision.
    rounding: Optional[Callable] = None


@attrs.frozen(eq=False)
class ChunkProbabilities:
    rows: object
    probs: object                         # P  [Hkv, G, C, Skv] (normalised, before dropout)
    lse: object                           # [Hkv, G, C]
    dropout_scale: Optional[object]       # Z = keep / (1 - p), or None
    tanh: Optional[object]                # tanh(s / softcap), for the softcap derivative


def row_chunks(desc: AttentionDescriptor, seqlen_q: int, seqlen_kv: int):
    rows_per_chunk = max(1, SCORE_BLOCK_ELEMENTS // max(1, desc.heads_q * seqlen_kv))
    for start in range(0, seqlen_q, rows_per_chunk):
        yield start, min(seqlen_q, start + rows_per_chunk)


def _grouped(x, heads_kv: int):
    """[C, Hq, D] -> [Hkv, G, C, D]."""
    rows, heads, dim = x.shape
    return x.reshape(rows, heads_kv, heads // heads_kv, dim).transpose(1, 2, 0, 3)


def _ungrouped(x):
    """[Hkv, G, C, D] -> [C, Hq, D]."""
    heads_kv, group, rows, dim = x.shape
    return x.transpose(2, 0, 1, 3).reshape(rows, heads_kv * group, dim)


def chunk_probabilities(desc, seq: SequenceInputs, start: int, stop: int, seed: int, xp) -> ChunkProbabilities:
    seqlen_q, seqlen_kv = seq.q.shape[0], seq.k.shape[0]
    heads_kv, group = desc.heads_kv, desc.group_size
    rows = xp.arange(start, stop)
    cols = xp.arange(seqlen_kv)
    keys = seq.k.transpose(1, 2, 0)[:, None]                        # [Hkv, 1, D, Skv]
    scores = xp.matmul(_grouped(seq.q[start:stop], heads_kv), keys) * desc.scale
    tanh = None
    if desc.softcap > 0:
        tanh = xp.tanh(scores / desc.softcap)
        scores = desc.softcap * tanh
    if desc.alibi:
        distance = xp.abs(rows[:, None] + alignment_offset(desc, seqlen_q, seqlen_kv) - cols[None, :])
        scores = scores - seq.slopes.reshape(heads_kv, group, 1, 1) * distance.astype(scores.dtype)
    if seq.bias is not None:
        bias = seq.bias[:, start:stop]
        scores = scores + (bias.reshape(heads_kv, group, stop - start, seqlen_kv) if bias.shape[0] > 1 else bias)
    mask = visible(desc, rows, cols, seqlen_q, seqlen_kv, xp)
    scores = xp.where(mask, scores, -xp.inf)
    row_max = scores.max(axis=-1) if seqlen_kv else xp.full(scores.shape[:-1], -xp.inf)
    sinks = None
    if desc.sink_logits:
        sinks = xp.broadcast_to(seq.sinks.reshape(heads_kv, group, 1), row_max.shape)
        row_max = xp.maximum(row_max, sinks)
    # An infinite max (no visible key) shifts by 0; a NaN max stays NaN so that it reaches the LSE.
    safe_max = xp.where(xp.isinf(row_max), 0.0, row_max)
    exps = xp.exp(scores - safe_max[..., None])
    denominator = exps.sum(axis=-1)
    if sinks is not None:
        denominator = denominator + xp.exp(sinks - safe_max)
    has_mass = ~(denominator <= 0)        # "no mass" is 0 only: a NaN denominator stays NaN
    probs = exps / xp.where(has_mass, denominator, 1.0)[..., None]
    lse = xp.where(has_mass, safe_max + xp.log(xp.where(has_mass, denominator, 1.0)), -xp.inf)
    dropout_scale = None
    if desc.dropout_p > 0:
        heads = xp.arange(desc.heads_q).reshape(heads_kv, group, 1, 1)
        keep = dropout_keep_mask(seed, seq.index, heads, rows[None, None, :, None],
                                 cols[None, None, None, :], desc.dropout_p, xp)
        dropout_scale = keep.astype(scores.dtype) / (1.0 - desc.dropout_p)
    return ChunkProbabilities(rows, probs, lse, dropout_scale, tanh)


def _values_weights(chunk: ChunkProbabilities, rounding=None):
    weights = chunk.probs if chunk.dropout_scale is None else chunk.probs * chunk.dropout_scale
    return weights if rounding is None else rounding(weights)


def forward_sequence(desc, seq: SequenceInputs, seed: int, xp):
    """out `[Sq, Hq, Dv]`, lse `[Hq, Sq]` of one sequence."""
    seqlen_q = seq.q.shape[0]
    out = xp.zeros((seqlen_q, desc.heads_q, desc.head_dim_v), dtype=seq.q.dtype)
    lse = xp.full((desc.heads_q, seqlen_q), -xp.inf, dtype=seq.q.dtype)
    values = seq.v.transpose(1, 0, 2)[:, None]                      # [Hkv, 1, Skv, Dv]
    for start, stop in row_chunks(desc, seqlen_q, seq.k.shape[0]):
        chunk = chunk_probabilities(desc, seq, start, stop, seed, xp)
        out[start:stop] = _ungrouped(xp.matmul(_values_weights(chunk, seq.rounding), values))
        lse[:, start:stop] = chunk.lse.reshape(desc.heads_q, stop - start)
    return out, lse


def backward_sequence(desc, seq: SequenceInputs, dout, seed: int, xp):
    """dq `[Sq, Hq, D]`, dk `[Skv, Hkv, D]`, dv `[Skv, Hkv, Dv]`, dsink `[Hq]` of one sequence.

    Everything is recomputed from the inputs in the reference precision: the reference's
    gradient is a function of (q, k, v, dout) alone."""
    seqlen_q, heads_kv = seq.q.shape[0], desc.heads_kv
    values = seq.v.transpose(1, 0, 2)[:, None]                      # [Hkv, 1, Skv, Dv]
    keys = seq.k.transpose(1, 0, 2)[:, None]                        # [Hkv, 1, Skv, D]
    dq = xp.zeros_like(seq.q)
    dk_grouped = xp.zeros((heads_kv,) + keys.shape[2:], dtype=seq.q.dtype)
    dv_grouped = xp.zeros((heads_kv,) + values.shape[2:], dtype=seq.q.dtype)
    dsink = xp.zeros(desc.heads_q, dtype=seq.q.dtype)
    for start, stop in row_chunks(desc, seqlen_q, seq.k.shape[0]):
        chunk = chunk_probabilities(desc, seq, start, stop, seed, xp)
        weights = _values_weights(chunk, seq.rounding)
        grad_out = _grouped(dout[start:stop], heads_kv)              # [Hkv, G, C, Dv]
        out = xp.matmul(weights, values)
        dv_grouped += xp.matmul(weights.swapaxes(-1, -2), grad_out).sum(axis=1)
        grad_probs = xp.matmul(grad_out, values.swapaxes(-1, -2))
        if chunk.dropout_scale is not None:
            grad_probs = grad_probs * chunk.dropout_scale
        delta = (grad_out * out).sum(axis=-1)                       # D_i  [Hkv, G, C]
        grad_scores = chunk.probs * (grad_probs - delta[..., None])
        if chunk.tanh is not None:
            grad_scores = grad_scores * (1.0 - chunk.tanh ** 2)
        grad_scores = grad_scores * desc.scale
        if seq.rounding is not None:
            grad_scores = seq.rounding(grad_scores)
        dq[start:stop] = _ungrouped(xp.matmul(grad_scores, keys))
        dk_grouped += xp.matmul(grad_scores.swapaxes(-1, -2), _grouped(seq.q[start:stop], heads_kv)).sum(axis=1)
        if desc.sink_logits:
            sink_prob = xp.exp(seq.sinks.reshape(heads_kv, -1, 1) - chunk.lse)
            sink_prob = xp.where(xp.isfinite(chunk.lse), sink_prob, 0.0)
            dsink -= (sink_prob * delta).sum(axis=-1).reshape(desc.heads_q)
    return dq, dk_grouped.transpose(1, 0, 2), dv_grouped.transpose(1, 0, 2), dsink
