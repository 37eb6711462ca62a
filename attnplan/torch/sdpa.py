"""`scaled_dot_product_attention`: torch.nn.functional.scaled_dot_product_attention's signature and
semantics, served by the planner.

PyTorch's `[..., heads, seqlen, dim]` is our `bhsd` layout once the leading dims are flattened into
one batch dim; `is_causal` is top-left aligned, as in PyTorch (so is a window given with it); a mask
becomes our additive bias.
"""

from __future__ import annotations

import math

import torch

from .functional import attention


def _as_bias(attn_mask, query, batch_shape: tuple, heads: int, seqlen_q: int, seqlen_kv: int):
    """A boolean mask (True = attend) or a float mask broadcastable to [*batch, heads, Lq, Lkv], as the
    additive bias [batch or 1, heads or 1, Lq, Lkv] in the query's dtype (-inf where masked)."""
    if attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=attn_mask.device)
        attn_mask = bias.masked_fill(attn_mask.logical_not(), -math.inf)
    else:
        attn_mask = attn_mask.to(query.dtype)
    full = batch_shape + (heads, seqlen_q, seqlen_kv)
    mask = attn_mask.reshape((1,) * (len(full) - attn_mask.dim()) + tuple(attn_mask.shape))
    mask = mask.expand(mask.shape[:-2] + (seqlen_q, seqlen_kv))
    mask_heads = mask.shape[-3]
    if all(size == 1 for size in mask.shape[:-3]):
        return mask.reshape(1, mask_heads, seqlen_q, seqlen_kv)
    return mask.expand(batch_shape + (mask_heads, seqlen_q, seqlen_kv)).reshape(-1, mask_heads, seqlen_q, seqlen_kv)


def _four_dims(x, batch_shape: tuple):
    """[*batch, heads, seqlen, dim] (heads = 1 for 2-d inputs) -> [batch, heads, seqlen, dim]."""
    if x.dim() == 2:
        x = x.unsqueeze(0)
    return x.expand(batch_shape + tuple(x.shape[-3:])).reshape((-1,) + tuple(x.shape[-3:]))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, window=(-1, -1), sink_tokens=0, sink_logits=None,
                                 alibi_slopes=None, softcap=0.0, backend=None, sku=None, policy=None,
                                 dropout_seed=None, generator=None):
    """A drop-in for torch.nn.functional.scaled_dot_product_attention (same arguments, same results,
    gradients for query, key, value and sink_logits), with our extras: `window`, `sink_tokens`,
    `sink_logits` [heads], `alibi_slopes` [heads] or [batch, heads] (float32), `softcap`, and how the
    plan is chosen (`backend`, `sku`, `policy`).  Dropout follows our Philox scheme (docs/semantics.md),
    with the seed drawn from `generator` (default: PyTorch's default generator) unless `dropout_seed`
    is given; its masks differ from PyTorch's, its statistics do not.  A float `attn_mask` receives no
    gradient: one that requires grad is refused."""
    if query.dim() < 2 or key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(f"query, key and value need the same rank >= 2, got {query.dim()}, {key.dim()}, "
                         f"{value.dim()}")
    if attn_mask is not None and is_causal:
        raise ValueError("attn_mask and is_causal=True are exclusive (as in PyTorch: pass one)")
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        raise ValueError("attn_mask requires grad, but attnplan computes no gradient for a bias; detach it")
    heads_q = query.shape[-3] if query.dim() > 2 else 1
    heads_kv = key.shape[-3] if key.dim() > 2 else 1
    if value.dim() > 2 and value.shape[-3] != heads_kv:
        raise ValueError(f"key has {heads_kv} heads, value {value.shape[-3]}")
    if heads_q % heads_kv or (heads_kv not in (1, heads_q) and not enable_gqa):
        raise ValueError(f"query has {heads_q} heads, key and value {heads_kv}: pass enable_gqa=True for grouped "
                         f"heads (heads_q must be a multiple of heads_kv)")
    batch_shape = tuple(torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3]))
    q, k, v = (_four_dims(x, batch_shape) for x in (query, key, value))
    seqlen_q, seqlen_kv = q.shape[2], k.shape[2]
    bias = None if attn_mask is None else _as_bias(attn_mask, q, batch_shape, heads_q, seqlen_q, seqlen_kv)
    out = attention(q, k, v, layout="bhsd", causal=is_causal, causal_alignment="top_left", window=window,
                    sink_tokens=sink_tokens, sink_logits=sink_logits, alibi_slopes=alibi_slopes, softcap=softcap,
                    scale=scale, dropout_p=dropout_p, dropout_seed=dropout_seed, generator=generator, bias=bias,
                    backend=backend, policy=policy, sku=sku)
    return out.reshape(batch_shape + tuple(out.shape[1 if query.dim() > 2 else 2:]))
