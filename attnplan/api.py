"""`attention` / `attention_backward`: descriptors built from the arrays, plans cached."""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from .descriptor import AttentionDescriptor, PagedKV
from .device import Device
from .errors import InvalidArguments
from .dtypes import DTYPE_NAMES
from .interop import as_host_index, as_tensor, readable_dtype
from .plan import Plan
from .policy import resolve_policy

PLAN_CACHE_SIZE = 256


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)        # thread-safe; two threads may build one plan twice
def _selected_plan(desc: AttentionDescriptor, device: Device, backend: Optional[str], policy: str) -> Plan:
    return Plan.select(desc, device, prefer=backend, restrict=backend is not None, policy=policy)


def _cached_plan(desc: AttentionDescriptor, device: Device, backend: Optional[str], policy: Optional[str]) -> Plan:
    # The policy is resolved per call, so that $ATTNPLAN_POLICY set later still counts.
    return _selected_plan(desc, device, backend, resolve_policy(policy))


def _max_length(cu_seqlens, given: Optional[int], name: str) -> int:
    if given is not None:
        return int(given)
    cu = as_host_index(cu_seqlens, name).astype(np.int64)
    return max(1, int(np.diff(cu).max(initial=1)))


def describe(q, k, v, *, causal=False, causal_alignment="bottom_right", window=(-1, -1), sink_tokens=0,
             sink_logits=None, alibi_slopes=None, softcap=0.0, scale=None, dropout_p=0.0,
             cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None,
             block_table=None, seqlens_kv=None, layout="bshd", return_lse=False, deterministic=False,
             direction="forward", out_dtype=None, bias=None) -> AttentionDescriptor:
    """The descriptor of a call, read off the arrays' shapes and dtypes."""
    tq, tk, tv = as_tensor(q, "q"), as_tensor(k, "k"), as_tensor(v, "v")
    for name, t in (("q", tq), ("k", tk), ("v", tv)):
        if t.dtype not in DTYPE_NAMES:
            raise InvalidArguments(name, f"holds {readable_dtype(t.dtype)} elements; attention takes "
                                         f"{', '.join(DTYPE_NAMES)} (float16, bfloat16, float32, float64, fp8)")
    expected_rank = 3 if layout == "thd" else 4
    for name, t in (("q", tq), ("k", tk), ("v", tv)):
        rank = 4 if (name != "q" and block_table is not None) else expected_rank
        if len(t.shape) != rank:
            raise InvalidArguments(name, f"has {len(t.shape)} dims; layout {layout!r} needs {rank}")
    paged = None
    if layout == "thd":
        if cu_seqlens_q is None:
            raise InvalidArguments("cu_seqlens_q", "is required for layout 'thd'")
        batch = as_tensor(cu_seqlens_q, "cu_seqlens_q").shape[0] - 1
        seqlen_q = _max_length(cu_seqlens_q, max_seqlen_q, "cu_seqlens_q")
        heads_q = tq.shape[1]
    elif layout == "bhsd":
        batch, heads_q, seqlen_q = tq.shape[:3]
    else:
        batch, seqlen_q, heads_q = tq.shape[:3]
    if block_table is not None:
        page_size, heads_kv = tk.shape[1], tk.shape[2]
        max_pages = as_tensor(block_table, "block_table").shape[-1]
        paged = PagedKV(page_size, max_pages)
        seqlen_kv = int(max_seqlen_kv) if max_seqlen_kv is not None else page_size * max_pages
    elif layout == "thd":
        if cu_seqlens_kv is None:
            raise InvalidArguments("cu_seqlens_kv", "is required for layout 'thd'")
        seqlen_kv = _max_length(cu_seqlens_kv, max_seqlen_kv, "cu_seqlens_kv")
        heads_kv = tk.shape[1]
    elif layout == "bhsd":
        heads_kv, seqlen_kv = tk.shape[1], tk.shape[2]
    else:
        seqlen_kv, heads_kv = tk.shape[1], tk.shape[2]
    extras = {} if scale is None else {"scale": scale}        # the descriptor converts and names bad values
    if out_dtype is not None:
        extras["out_dtype"] = out_dtype
    return AttentionDescriptor(
        batch=int(batch), seqlen_q=int(seqlen_q), seqlen_kv=int(seqlen_kv), heads_q=int(heads_q),
        heads_kv=int(heads_kv), head_dim=int(tq.shape[-1]), head_dim_v=int(tv.shape[-1]),
        dtype=tq.dtype, layout=layout, causal=causal, causal_alignment=causal_alignment,
        window=window, sink_tokens=sink_tokens, sink_logits=sink_logits is not None,
        alibi=alibi_slopes is not None, bias=bias is not None, softcap=softcap, dropout_p=dropout_p,
        paged=paged, return_lse=return_lse, deterministic=deterministic, direction=direction, **extras)


def _device_of(q) -> Device:
    t = as_tensor(q, "q")
    return Device.cuda(t.device_index) if t.is_cuda else Device.cpu()


_RUN_ARGUMENTS = ("alibi_slopes", "sink_logits", "cu_seqlens_q", "cu_seqlens_kv", "block_table",
                  "seqlens_kv", "bias", "dropout_seed", "stream", "descale_q", "descale_k", "descale_v", "scale_o", "amax_o")
_DESCRIBE_ONLY = ("causal", "causal_alignment", "window", "sink_tokens", "softcap", "scale", "dropout_p",
                  "max_seqlen_q", "max_seqlen_kv", "layout", "return_lse", "deterministic", "out_dtype")


def attention(q, k, v, *, backend: Optional[str] = None, policy: Optional[str] = None, out=None, **options):
    """Attention of q, k, v (see docs/semantics.md).  Returns `out`, or `(out, lse)` with
    `return_lse=True`, in the caller's array type.  `backend` pins a backend (or family); `policy`
    chooses among the rest ("fastest", "first", "autotune"; see Plan.select)."""
    _reject_unknown(options)
    desc = describe(q, k, v, **{n: options[n] for n in options if n in _DESCRIBE_ONLY + _RUN_ARGUMENTS[:7]})
    plan = _cached_plan(desc, _device_of(q), backend, policy)
    run_args = {n: options[n] for n in _RUN_ARGUMENTS if options.get(n) is not None}
    result = plan.run(q=q, k=k, v=v, out=out, **run_args)
    return (result.out, result.lse) if desc.return_lse else result.out


def attention_backward(dout, q, k, v, out, lse, *, backend: Optional[str] = None, policy: Optional[str] = None,
                       **options):
    """Gradients `(dq, dk, dv)` (plus `dsink_logits` when sink logits are used)."""
    _reject_unknown(options)
    options.pop("return_lse", None)
    desc = describe(q, k, v, direction="backward",
                    **{n: options[n] for n in options if n in _DESCRIBE_ONLY + _RUN_ARGUMENTS[:7]})
    plan = _cached_plan(desc, _device_of(q), backend, policy)
    run_args = {n: options[n] for n in _RUN_ARGUMENTS if options.get(n) is not None}
    return plan.run(q=q, k=k, v=v, out=out, lse=lse, dout=dout, **run_args)


def _reject_unknown(options: dict) -> None:
    unknown = sorted(set(options) - set(_RUN_ARGUMENTS) - set(_DESCRIBE_ONLY))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
