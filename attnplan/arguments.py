"""Run-time arguments: what shapes, dtypes and strides a descriptor expects, checked once.

`bind_arguments` turns the keyword arguments of `plan.run` into a `BoundArguments` of
`Tensor` views, raising `InvalidArguments` naming the first argument that does not fit.
"""

from __future__ import annotations

import functools

from typing import Any, Optional

import attrs
import numpy as np

from .descriptor import AttentionDescriptor
from .dtypes import FP8_DTYPES, lse_dtype
from .errors import InvalidArguments
from .interop import Tensor, array_reader, as_host_index, as_tensor

FORWARD_ARGUMENTS = ("q", "k", "v", "out", "lse", "alibi_slopes", "bias", "sink_logits", "cu_seqlens_q",
                     "cu_seqlens_kv", "block_table", "seqlens_kv", "dropout_seed", "workspace",
                     "stream")
# fp8 per-tensor scales (float32 arrays of shape [1]; optional, 1 when not given): the values of q, k, v
# are their stored values times descale_*; an fp8 `out` stores O * scale_o; amax_o receives max|O|.
FP8_SCALE_ARGUMENTS = ("descale_q", "descale_k", "descale_v", "scale_o", "amax_o")
FORWARD_ARGUMENTS += FP8_SCALE_ARGUMENTS
# The backward's own inputs, then its outputs, which a caller may give (like the forward's out / lse).
GRADIENT_OUTPUTS = ("dq", "dk", "dv", "dsink_logits")
BACKWARD_ARGUMENTS = FORWARD_ARGUMENTS + ("dout",) + GRADIENT_OUTPUTS
_INDEX_ARGUMENTS = ("cu_seqlens_q", "cu_seqlens_kv", "block_table", "seqlens_kv")


@attrs.define(eq=False)          # built on every call: a plain slotted record (frozen costs per field)
class BoundArguments:
    """Checked arguments.  Tensors are views of the caller's arrays; `lengths` holds host
    copies of the per-sequence lengths when they were read (value checks)."""

    q: Tensor
    k: Tensor
    v: Tensor
    out: Optional[Tensor] = None
    lse: Optional[Tensor] = None
    dout: Optional[Tensor] = None
    dq: Optional[Tensor] = None
    dk: Optional[Tensor] = None
    dv: Optional[Tensor] = None
    dsink_logits: Optional[Tensor] = None
    alibi_slopes: Optional[Tensor] = None
    bias: Optional[Tensor] = None
    sink_logits: Optional[Tensor] = None
    cu_seqlens_q: Optional[Tensor] = None
    cu_seqlens_kv: Optional[Tensor] = None
    block_table: Optional[Tensor] = None
    seqlens_kv: Optional[Tensor] = None
    descale_q: Optional[Tensor] = None
    descale_k: Optional[Tensor] = None
    descale_v: Optional[Tensor] = None
    scale_o: Optional[Tensor] = None
    amax_o: Optional[Tensor] = None
    dropout_seed: int = 0
    workspace: Optional[Tensor] = None
    stream: Any = None
    # Hashable: fixes the type, dtype, shape, strides and device of every array argument (None where
    # not known); backends key what they derive from the arguments' layout on it.
    signature: Any = None

    @property
    def is_cuda(self) -> bool:
        return self.q.is_cuda


def sequence_dims(desc: AttentionDescriptor, role: str) -> tuple:
    """The leading dims of q-like ('q') and kv-like ('kv') tensors, None = free."""
    heads = desc.heads_q if role == "q" else desc.heads_kv
    seqlen = desc.seqlen_q if role == "q" else desc.seqlen_kv
    if role == "kv" and desc.paged is not None:
        return (None, desc.paged.page_size, heads)
    if desc.layout == "thd":
        return (None, heads)
    if desc.layout == "bhsd":
        return (desc.batch, heads, seqlen)
    return (desc.batch, seqlen, heads)


def expected_shapes(desc: AttentionDescriptor) -> dict[str, tuple]:
    """Shape of every array argument for `desc` (None marks a dimension that is free)."""
    q_dims, kv_dims = sequence_dims(desc, "q"), sequence_dims(desc, "kv")
    shapes = {
        "q": q_dims + (desc.head_dim,),
        "k": kv_dims + (desc.head_dim,),
        "v": kv_dims + (desc.head_dim_v,),
        "out": q_dims + (desc.head_dim_v,),
        "dout": q_dims + (desc.head_dim_v,),
        "dq": q_dims + (desc.head_dim,),
        "dk": kv_dims + (desc.head_dim,),
        "dv": kv_dims + (desc.head_dim_v,),
        "dsink_logits": (desc.heads_q,),
        "lse": (desc.heads_q, None) if desc.layout == "thd" else (desc.batch, desc.heads_q, desc.seqlen_q),
        "sink_logits": (desc.heads_q,),
        "cu_seqlens_q": (desc.batch + 1,),
        "cu_seqlens_kv": (desc.batch + 1,),
        "seqlens_kv": (desc.batch,),
        **{name: (1,) for name in FP8_SCALE_ARGUMENTS},
    }
    if desc.paged is not None:
        shapes["block_table"] = (desc.batch, desc.paged.max_pages_per_seq)
    return shapes


def lse_shape(desc: AttentionDescriptor, total_q: int) -> tuple:
    """Shape of the LSE: [batch, heads_q, seqlen_q], or [heads_q, total_q] for `thd`."""
    return (desc.heads_q, total_q) if desc.layout == "thd" else (desc.batch, desc.heads_q, desc.seqlen_q)


def _shape_matches(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _describe(expected: tuple) -> str:
    return "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"


def _check(name: str, t: Tensor, shape: tuple, dtypes: tuple, on_cuda: bool, device_index: int):
    if not _shape_matches(t.shape, shape):
        raise InvalidArguments(name, f"has shape {list(t.shape)}, expected {_describe(shape)}")
    if t.dtype not in dtypes:
        raise InvalidArguments(name, f"has dtype {t.dtype}, expected {' or '.join(dtypes)}")
    if t.is_cuda != on_cuda or (on_cuda and t.device_index != device_index):
        where = f"cuda:{t.device_index}" if t.is_cuda else "the host"
        want = f"cuda:{device_index}" if on_cuda else "the host"
        raise InvalidArguments(name, f"lives on {where}, expected {want} like q")
    if t.data.size and t.shape[-1] > 1 and t.strides[-1] != 1:     # empty arrays have zero strides
        raise InvalidArguments(name, f"has innermost stride {t.strides[-1]}; the last dimension must be contiguous")
    if any(s < 0 for s in t.strides):
        raise InvalidArguments(name, "has a negative stride")


def _writeable(t: Tensor) -> bool:
    flags = getattr(t.data, "flags", None)
    return bool(getattr(flags, "writeable", True))


def _required(desc: AttentionDescriptor, direction: str) -> dict[str, bool]:
    paged = desc.paged is not None
    return {
        "alibi_slopes": desc.alibi,
        "bias": desc.bias,
        "sink_logits": desc.sink_logits,
        "cu_seqlens_q": desc.varlen,
        "cu_seqlens_kv": desc.varlen and not paged,
        "block_table": paged,
        "seqlens_kv": paged,
        "out": direction == "backward",
        "lse": direction == "backward",
        "dout": direction == "backward",
        "dsink_logits": False,
    }


@attrs.frozen
class _Rules:
    """What a descriptor expects of its arguments, worked out once per descriptor (binding runs
    on every call, so none of this is rebuilt there)."""
    allowed: tuple
    allowed_set: frozenset
    required: dict
    shapes: dict
    dtypes: dict


@functools.lru_cache(maxsize=256)
def _rules(desc: AttentionDescriptor) -> _Rules:
    allowed = BACKWARD_ARGUMENTS if desc.direction == "backward" else FORWARD_ARGUMENTS
    out_dt, lse_dt = desc.out_dtype, lse_dtype(desc.dtype)
    dtypes = {"q": (desc.dtype,), "k": (desc.dtype,), "v": (desc.dtype,), "out": (out_dt,),
              "dout": (out_dt,), "lse": (lse_dt,), "sink_logits": ("f32",), "dsink_logits": ("f32",),
              "dq": (desc.dtype,), "dk": (desc.dtype,), "dv": (desc.dtype,),
              "cu_seqlens_q": ("i32",), "cu_seqlens_kv": ("i32",), "block_table": ("i32",),
              "seqlens_kv": ("i32",), **{name: ("f32",) for name in FP8_SCALE_ARGUMENTS}}
    return _Rules(allowed, frozenset(allowed), _required(desc, desc.direction), expected_shapes(desc), dtypes)


# (descriptor, argument signature) pairs whose structural checks have passed: a call with the same
# signature (types, shapes, strides, dtypes, devices, writability) skips them.  Bounded.
_VERIFIED: dict = {}
_VERIFIED_LIMIT = 4096


def _read(kwargs: dict):
    """One pass over the arguments: (signature, tensors).  The signature holds everything the
    structural checks depend on (and keys what backends derive from the arguments' layout); it is
    None where some argument cannot be read cheaply (then the full checks run).  `tensors` maps each
    array argument to its borrowed Tensor, or None where as_tensor must make it."""
    parts, tensors = [], {}
    for name, x in kwargs.items():
        if x is None or name == "dropout_seed" or name == "stream":
            parts.append((name, x is None))
            continue
        kind = type(x)
        if kind is Tensor:
            reader = array_reader(type(x.data))
            if reader is None:
                return None, None
            parts.append((name, x.dtype, reader(x.data)[0]))
            tensors[name] = x
            continue
        reader = array_reader(kind)
        if reader is None:
            return None, None
        facts, tensors[name] = reader(x)
        parts.append((name, kind, facts))
    return tuple(parts), tensors


def bind_arguments(desc: AttentionDescriptor, kwargs: dict, *, check_values: bool = True) -> BoundArguments:
    """Check `kwargs` against `desc` and return them bound; raise InvalidArguments otherwise.
    Structural checks run once per (descriptor, argument signature); value checks of index
    arrays run whenever `check_values` is set."""
    signature, tensors = _read(kwargs)
    key = (desc, signature) if signature is not None else None
    if key is not None and key in _VERIFIED:
        bound = {name: t if t is not None else as_tensor(kwargs[name], name) for name, t in tensors.items()}
    else:
        bound = _collect_checked(desc, kwargs)
        if key is not None:
            if len(_VERIFIED) >= _VERIFIED_LIMIT:
                _VERIFIED.clear()
            _VERIFIED[key] = True
    bound["dropout_seed"] = _check_seed(desc, kwargs.get("dropout_seed"))
    bound["stream"] = kwargs.get("stream")
    bound["signature"] = signature
    if check_values:
        check_index_values(desc, bound)
    return BoundArguments(**bound)


def _collect_checked(desc: AttentionDescriptor, kwargs: dict) -> dict:
    rules = _rules(desc)
    if not rules.allowed_set.issuperset(kwargs):
        unknown = sorted(set(kwargs) - rules.allowed_set)
        raise InvalidArguments(unknown[0], f"is not a {desc.direction} argument (allowed: {', '.join(rules.allowed)})")
    for name in ("q", "k", "v"):
        if kwargs.get(name) is None:
            raise InvalidArguments(name, "is required")
    for name, needed in rules.required.items():
        given = kwargs.get(name) is not None
        if needed and not given:
            raise InvalidArguments(name, f"is required for this descriptor ({_why_required(name, desc)})")
        if given and not needed and name not in ("out", "lse") and not (name == "dsink_logits" and desc.sink_logits):
            raise InvalidArguments(name, f"is given but the descriptor does not use it ({_why_required(name, desc)})")
    fp8_out = desc.out_dtype in FP8_DTYPES
    for name in FP8_SCALE_ARGUMENTS:
        usable = fp8_out if name in ("scale_o", "amax_o") else desc.is_fp8
        if kwargs.get(name) is not None and not usable:
            why = f"out_dtype={desc.out_dtype!r} is not fp8" if name in ("scale_o", "amax_o") else \
                f"dtype={desc.dtype!r} is not fp8"
            raise InvalidArguments(name, f"is given but the descriptor does not use it ({why})")

    q = as_tensor(kwargs["q"], "q")
    on_cuda, index = q.is_cuda, q.device_index
    shapes, dtypes = rules.shapes, rules.dtypes
    bound: dict[str, Any] = {}
    for name in ("q", "k", "v", "out", "dout", "lse", "sink_logits") + _INDEX_ARGUMENTS + FP8_SCALE_ARGUMENTS \
            + GRADIENT_OUTPUTS:
        if kwargs.get(name) is None:
            continue
        t = q if name == "q" else as_tensor(kwargs[name], name)
        _check(name, t, shapes[name], dtypes[name], on_cuda, index)
        written = name in GRADIENT_OUTPUTS or (name in ("out", "lse", "amax_o") and desc.direction == "forward")
        if written and t.origin == "jax":
            raise InvalidArguments(name, "is a JAX array, which is immutable; leave it out and use the returned array")
        if written and not _writeable(t):
            raise InvalidArguments(name, "is read-only; the plan writes its result there")
        bound[name] = t
    _check_matching_totals(desc, bound)
    if desc.alibi:
        bound["alibi_slopes"] = _check_alibi(desc, as_tensor(kwargs["alibi_slopes"], "alibi_slopes"), on_cuda, index)
    if desc.bias:
        bound["bias"] = _check_bias(desc, as_tensor(kwargs["bias"], "bias"), on_cuda, index)
    _check_seed(desc, kwargs.get("dropout_seed"))
    if kwargs.get("workspace") is not None:
        bound["workspace"] = as_tensor(kwargs["workspace"], "workspace")
    return bound


def _why_required(name: str, desc: AttentionDescriptor) -> str:
    return {
        "alibi_slopes": f"alibi={desc.alibi}",
        "bias": f"bias={desc.bias}",
        "sink_logits": f"sink_logits={desc.sink_logits}",
        "cu_seqlens_q": f"varlen={desc.varlen}",
        "cu_seqlens_kv": f"varlen={desc.varlen}, paged={desc.paged is not None}",
        "block_table": f"paged={desc.paged}",
        "seqlens_kv": f"paged={desc.paged}",
        "out": f"direction={desc.direction!r}",
        "lse": f"direction={desc.direction!r}",
        "dout": f"direction={desc.direction!r}",
        "dsink_logits": f"sink_logits={desc.sink_logits}",
    }[name]


def _check_matching_totals(desc: AttentionDescriptor, bound: dict) -> None:
    """Free dimensions that must agree between tensors (token totals, page counts)."""
    pairs = [("k", "v", 0), ("k", "dk", 0), ("k", "dv", 0)]
    if desc.layout == "thd":
        pairs += [("q", "out", 0), ("q", "dout", 0), ("q", "dq", 0)]
    for a, b, axis in pairs:
        if a in bound and b in bound and bound[a].shape[axis] != bound[b].shape[axis]:
            raise InvalidArguments(b, f"has {bound[b].shape[axis]} rows in dim {axis}, {a} has {bound[a].shape[axis]}")
    if desc.layout == "thd" and "lse" in bound and bound["lse"].shape[1] != bound["q"].shape[0]:
        raise InvalidArguments("lse", f"has shape {list(bound['lse'].shape)}, expected [{desc.heads_q}, {bound['q'].shape[0]}]")


def _check_alibi(desc: AttentionDescriptor, t: Tensor, on_cuda: bool, index: int) -> Tensor:
    shape = (desc.heads_q,) if t.data.ndim == 1 else (desc.batch, desc.heads_q)
    _check("alibi_slopes", t, shape, ("f32",), on_cuda, index)
    return t


def _check_bias(desc: AttentionDescriptor, t: Tensor, on_cuda: bool, index: int) -> Tensor:
    """[batch or 1, heads_q or 1, seqlen_q, seqlen_kv], broadcast over the dims of size 1."""
    shape = t.shape
    batch = shape[0] if len(shape) == 4 and shape[0] in (1, desc.batch) else desc.batch
    heads = shape[1] if len(shape) == 4 and shape[1] in (1, desc.heads_q) else desc.heads_q
    _check("bias", t, (batch, heads, desc.seqlen_q, desc.seqlen_kv), (desc.dtype,), on_cuda, index)
    return t


def _check_seed(desc: AttentionDescriptor, seed) -> int:
    if desc.dropout_p == 0:
        if seed is not None:
            raise InvalidArguments("dropout_seed", "is given but dropout_p is 0")
        return 0
    if seed is None:
        raise InvalidArguments("dropout_seed", "is required when dropout_p > 0 (the backward pass must reuse it)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise InvalidArguments("dropout_seed", f"is {seed!r}; expected an integer in [0, 2**64)")
    return int(seed)


def _lengths(cu: np.ndarray, name: str, total: int, max_len: int) -> np.ndarray:
    if cu[0] != 0 or np.any(np.diff(cu.astype(np.int64)) < 0):
        raise InvalidArguments(name, "must start at 0 and never decrease")
    if cu[-1] != total:
        raise InvalidArguments(name, f"ends at {int(cu[-1])}, but the tensor holds {total} rows")
    lengths = np.diff(cu.astype(np.int64))
    if lengths.max(initial=0) > max_len:
        raise InvalidArguments(name, f"has a sequence of length {int(lengths.max())} > the descriptor's max {max_len}")
    return lengths


def check_index_values(desc: AttentionDescriptor, bound: dict) -> None:
    """Value checks of index arrays (reads them to the host: one small copy each)."""
    if desc.varlen:
        _lengths(as_host_index(bound["cu_seqlens_q"], "cu_seqlens_q"), "cu_seqlens_q",
                 bound["q"].shape[0], desc.seqlen_q)
        if desc.paged is None:
            _lengths(as_host_index(bound["cu_seqlens_kv"], "cu_seqlens_kv"), "cu_seqlens_kv",
                     bound["k"].shape[0], desc.seqlen_kv)
    if desc.paged is not None:
        seqlens = as_host_index(bound["seqlens_kv"], "seqlens_kv").astype(np.int64)
        if np.any(seqlens < 0) or np.any(seqlens > desc.seqlen_kv):
            raise InvalidArguments("seqlens_kv", f"values must lie in [0, {desc.seqlen_kv}] (seqlen_kv)")
        table = as_host_index(bound["block_table"], "block_table").astype(np.int64)
        pages_needed = -(-seqlens // desc.paged.page_size)
        num_pages = bound["k"].shape[0]
        for b, used in enumerate(pages_needed):
            row = table[b, :used]
            if np.any(row < 0) or np.any(row >= num_pages):
                raise InvalidArguments("block_table", f"row {b} names a page outside [0, {num_pages})")
