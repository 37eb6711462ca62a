"""Declared backend capabilities and the one generic checker that turns them into reasons.

A backend declares what it supports as a `Capabilities` value; `capability_reasons` runs a
flat list of small named checks over (capabilities, descriptor, device) and returns a
human-readable reason for every one that fails.  Backends add only the checks that are truly
their own (library missing, compiler missing, ...).
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs

from .descriptor import AttentionDescriptor
from .device import Device

ALL_DTYPES = frozenset({"f16", "bf16", "f32", "f64", "e4m3", "e5m2"})
ALL_LAYOUTS = frozenset({"bshd", "bhsd", "thd"})


@attrs.frozen(kw_only=True)
class Capabilities:
    devices: frozenset = frozenset({"cuda"})
    min_arch: int = 0                 # lowest compute capability (for "cuda")
    max_arch: int = 10**6             # highest compute capability the code is valid for
    dtypes: frozenset = ALL_DTYPES
    backward_dtypes: frozenset = frozenset({"f16", "bf16", "f32", "f64"})
    layouts: frozenset = ALL_LAYOUTS
    head_dims: Optional[frozenset] = None   # None: any 1..256
    head_dim_multiple: int = 1
    head_dim_v_differs: bool = True
    directions: frozenset = frozenset({"forward", "backward"})
    causal: bool = True
    causal_alignments: frozenset = frozenset({"bottom_right", "top_left"})
    window: bool = True
    sink_tokens: bool = True
    sink_logits: bool = True
    alibi: bool = True
    bias: bool = True
    softcap: bool = True
    dropout: bool = True
    dropout_in_backward: bool = True
    gqa: bool = True
    varlen: bool = True
    paged: bool = True
    paged_backward: bool = True       # paged KV in the backward pass too
    lse: bool = True
    deterministic_backward: bool = True
    empty: bool = False               # empty problems (batch, seqlen_q or seqlen_kv of 0)


Check = Callable[[Capabilities, AttentionDescriptor, Device], Optional[str]]


def _device_kind(c, d, dev):
    if dev.kind not in c.devices:
        return f"runs on {sorted(c.devices)}, not {dev.kind}"


def _arch(c, d, dev):
    if dev.kind == "cuda" and dev.arch is not None and not c.min_arch <= dev.arch <= c.max_arch:
        high = "" if c.max_arch >= 10**6 else f" to sm_{c.max_arch}"
        return f"needs sm_{c.min_arch}{high}, device is sm_{dev.arch}"
    if dev.kind == "cuda" and dev.arch is None:
        return "no CUDA device is present"


def _dtype(c, d, dev):
    if d.dtype not in c.dtypes:
        return f"dtype {d.dtype!r} not supported (supports {sorted(c.dtypes)})"


def _direction(c, d, dev):
    if d.direction not in c.directions:
        return f"no {d.direction} pass"
    if d.direction == "backward" and d.dtype not in c.backward_dtypes:
        return f"backward in {d.dtype!r} not supported (supports {sorted(c.backward_dtypes)})"


def _layout(c, d, dev):
    if d.layout not in c.layouts:
        return f"layout {d.layout!r} not supported (supports {sorted(c.layouts)})"


def _head_dims(c, d, dev):
    for name, value in (("head_dim", d.head_dim), ("head_dim_v", d.head_dim_v)):
        if c.head_dims is not None and value not in c.head_dims:
            return f"{name}={value} not supported (supports {sorted(c.head_dims)})"
        if value % c.head_dim_multiple:
            return f"{name}={value} is not a multiple of {c.head_dim_multiple}"
    if d.head_dim != d.head_dim_v and not c.head_dim_v_differs:
        return f"head_dim_v={d.head_dim_v} must equal head_dim={d.head_dim}"


def _flag(feature: str, active: Callable[[AttentionDescriptor], bool], label: str) -> Check:
    def check(c, d, dev):
        if active(d) and not getattr(c, feature):
            return f"{label} not supported"
    check.__name__ = f"_{feature}"
    return check


def _causal_alignment(c, d, dev):
    if d.causal and d.causal_alignment not in c.causal_alignments:
        return f"causal_alignment {d.causal_alignment!r} not supported"


def _dropout_backward(c, d, dev):
    if d.dropout_p > 0 and d.direction == "backward" and not c.dropout_in_backward:
        return "dropout in the backward pass not supported"


def _paged_backward(c, d, dev):
    if d.paged is not None and d.direction == "backward" and not c.paged_backward:
        return "paged KV in the backward pass not supported"


def _deterministic(c, d, dev):
    if d.deterministic and d.direction == "backward" and not c.deterministic_backward:
        return "no deterministic backward"


CHECKS: tuple[Check, ...] = (
    _device_kind, _arch, _dtype, _direction, _layout, _head_dims,
    _flag("causal", lambda d: d.causal, "causal masking"),
    _causal_alignment,
    _flag("window", lambda d: d.has_window, "sliding window"),
    _flag("sink_tokens", lambda d: d.sink_tokens > 0, "sink tokens"),
    _flag("sink_logits", lambda d: d.sink_logits, "sink logits"),
    _flag("alibi", lambda d: d.alibi, "ALiBi"),
    _flag("bias", lambda d: d.bias, "additive bias"),
    _flag("softcap", lambda d: d.softcap > 0, "softcap"),
    _flag("dropout", lambda d: d.dropout_p > 0, "dropout"),
    _dropout_backward,
    _flag("gqa", lambda d: d.heads_q != d.heads_kv, "GQA/MQA (heads_q != heads_kv)"),
    _flag("varlen", lambda d: d.varlen, "varlen (cu_seqlens)"),
    _flag("paged", lambda d: d.paged is not None, "paged KV"),
    _paged_backward,
    _flag("lse", lambda d: d.return_lse, "returning LSE"),
    _deterministic,
    _flag("empty", lambda d: d.is_empty, "an empty problem (batch, seqlen_q or seqlen_kv of 0)"),
)


def capability_reasons(caps: Capabilities, desc: AttentionDescriptor, device: Device) -> list[str]:
    """Every reason why `caps` cannot take `desc` on `device` (empty: it can)."""
    reasons = []
    for check in CHECKS:
        reason = check(caps, desc, device)
        if reason:
            reasons.append(reason)
    return reasons
