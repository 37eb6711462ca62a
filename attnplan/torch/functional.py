"""`attention` / `attention_backward` for torch tensors: the keywords of `attnplan.attention`, through the
custom ops.  This layer only normalises arguments (it is what torch.compile traces): the descriptor,
the planner and the plan cache live behind the op."""

from __future__ import annotations

import contextlib
import json
from typing import Optional

import torch

from ..errors import InvalidArguments
from . import ops

_SEED_RANGE = (-(1 << 63), (1 << 63) - 1)       # int64 bits of the unsigned 64-bit seed (the top value aside)
_TORCH_DTYPE_NAMES = {dtype: name for name, dtype in ops.TORCH_DTYPES.items()}


def dropout_seed_tensor(dropout_p: float, dropout_seed=None, generator: Optional[torch.Generator] = None):
    """The seed the op takes: None without dropout; else an int64 CPU scalar holding the given seed's
    bits, or one drawn from `generator` (default: PyTorch's default CPU generator, so torch.manual_seed
    makes runs reproducible).  A drawn seed is a tensor, so drawing it compiles into the graph."""
    if isinstance(dropout_seed, torch.Tensor):
        return dropout_seed
    if dropout_seed is not None:
        if isinstance(dropout_seed, bool) or not isinstance(dropout_seed, int) or not 0 <= dropout_seed < 1 << 64:
            raise InvalidArguments("dropout_seed", f"is {dropout_seed!r}; expected an integer in [0, 2**64)")
        return torch.tensor(dropout_seed - (1 << 64) if dropout_seed >> 63 else dropout_seed, dtype=torch.int64)
    if dropout_p == 0:
        return None
    device = generator.device if generator is not None else "cpu"
    return torch.randint(*_SEED_RANGE, (), dtype=torch.int64, generator=generator, device=device)


def _dtype_text(dtype) -> Optional[str]:
    return _TORCH_DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype


@torch.compiler.assume_constant_result      # a SKU is a constant of the call site: not traced into
def _sku_text(sku) -> Optional[str]:
    """`sku=` as the op's text: a KernelSku (or its JSON) pins the forward, a pair pins both passes."""
    if sku is None or isinstance(sku, str):
        return sku
    if isinstance(sku, (tuple, list)):
        return json.dumps([json.loads(s) if isinstance(s, str) else s.to_dict() for s in sku], sort_keys=True)
    return sku.to_json()


def _stream_context(stream):
    """`stream=` as PyTorch's current stream for the call (None: PyTorch's current stream as it is)."""
    if stream is None:
        return contextlib.nullcontext()
    if not isinstance(stream, torch.cuda.Stream):
        from ..streams import stream_handle
        stream = torch.cuda.ExternalStream(stream_handle(stream))
    return torch.cuda.stream(stream)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _options(causal, causal_alignment, window, sink_tokens, softcap, scale, dropout_p, max_seqlen_q, max_seqlen_kv,
             layout, deterministic, backend, policy, sku) -> dict:
    left, right = window
    return dict(causal=causal, causal_alignment=causal_alignment, window_left=left, window_right=right,
                sink_tokens=sink_tokens, softcap=float(softcap), scale=None if scale is None else float(scale),
                dropout_p=float(dropout_p), max_seqlen_q=max_seqlen_q, max_seqlen_kv=max_seqlen_kv, layout=layout,
                deterministic=deterministic, backend=backend, policy=policy, sku=_sku_text(sku))


def attention(q, k, v, *, causal=False, causal_alignment="bottom_right", window=(-1, -1), sink_tokens=0,
              softcap=0.0, scale=None, dropout_p=0.0, max_seqlen_q=None, max_seqlen_kv=None, layout="bshd",
              return_lse=False, deterministic=False, out_dtype=None, alibi_slopes=None, sink_logits=None,
              bias=None, cu_seqlens_q=None, cu_seqlens_kv=None, block_table=None, seqlens_kv=None,
              dropout_seed=None, stream=None, descale_q=None, descale_k=None, descale_v=None, scale_o=None,
              amax_o=None, backend=None, policy=None, sku=None, out=None, generator=None):
    """`attnplan.attention` for torch tensors, differentiable (q, k, v and sink_logits) and compilable.

    The keywords are those of `attnplan.attention` (docs/semantics.md), plus `sku` (a KernelSku or its
    JSON: that exact kernel) and `generator` (where a dropout seed comes from when none is given).
    Returns `out`, or `(out, lse)` with `return_lse=True`; the LSE carries no gradient.  `out=` and
    `amax_o=` receive copies of the op's results."""
    # The backward needs the LSE: compute it whenever a gradient may be asked for.
    want_lse = return_lse or _needs_grad(q, k, v, sink_logits)
    with _stream_context(stream):
        result, lse, amax = ops.attention_op(
            q, k, v, alibi_slopes=alibi_slopes, bias=bias, sink_logits=sink_logits, cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_kv=cu_seqlens_kv, block_table=block_table, seqlens_kv=seqlens_kv,
            dropout_seed=dropout_seed_tensor(dropout_p, dropout_seed, generator), descale_q=descale_q,
            descale_k=descale_k, descale_v=descale_v, scale_o=scale_o,
            **_options(causal, causal_alignment, window, sink_tokens, softcap, scale, dropout_p, max_seqlen_q,
                       max_seqlen_kv, layout, deterministic, backend, policy, sku),
            return_lse=want_lse, out_dtype=_dtype_text(out_dtype), return_amax=amax_o is not None)
        if amax_o is not None:
            amax_o.copy_(amax)
        if out is not None:
            out.copy_(result)
            result = out
    return (result, lse) if return_lse else result


def attention_backward(dout, q, k, v, out, lse, *, causal=False, causal_alignment="bottom_right", window=(-1, -1),
                       sink_tokens=0, softcap=0.0, scale=None, dropout_p=0.0, max_seqlen_q=None, max_seqlen_kv=None,
                       layout="bshd", deterministic=False, alibi_slopes=None, sink_logits=None, bias=None,
                       cu_seqlens_q=None, cu_seqlens_kv=None, block_table=None, seqlens_kv=None, dropout_seed=None,
                       stream=None, backend=None, policy=None, sku=None, return_lse=None, out_dtype=None):
    """`attnplan.attention_backward` for torch tensors: `(dq, dk, dv)`, plus `dsink_logits` with sink
    logits.  Dropout needs the forward's `dropout_seed` (an int, or the seed tensor it used).
    (`return_lse` and `out_dtype` are accepted and ignored, as by attnplan.attention_backward.)"""
    if dropout_p and dropout_seed is None:
        raise InvalidArguments("dropout_seed", "is required when dropout_p > 0 (the forward's seed)")
    with _stream_context(stream):
        dq, dk, dv, dsink = ops.attention_backward_op(
            dout, q, k, v, out, lse, alibi_slopes=alibi_slopes, bias=bias, sink_logits=sink_logits,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_kv=cu_seqlens_kv, block_table=block_table, seqlens_kv=seqlens_kv,
            dropout_seed=dropout_seed_tensor(dropout_p, dropout_seed),
            **_options(causal, causal_alignment, window, sink_tokens, softcap, scale, dropout_p, max_seqlen_q,
                       max_seqlen_kv, layout, deterministic, backend, policy, sku))
    return (dq, dk, dv, dsink) if sink_logits is not None else (dq, dk, dv)
