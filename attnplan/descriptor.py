"""`AttentionDescriptor`: the immutable, validated description of one attention problem."""

from __future__ import annotations

import math
from typing import Optional

import attrs
import numpy as np

from .dtypes import DTYPE_NAMES, FP8_DTYPES, as_dtype_name, output_dtype
from .errors import InvalidDescriptor

MAX_HEAD_DIM = 256
LAYOUTS = ("bshd", "bhsd", "thd")
CAUSAL_ALIGNMENTS = ("bottom_right", "top_left")
DIRECTIONS = ("forward", "backward")


# -- small validators: each raises InvalidDescriptor naming the field ---------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_int(value):
    """NumPy integers become Python ints (bools and everything else are left to the validator)."""
    return int(value) if isinstance(value, np.integer) else value


def _plain_float(value):
    """Real numbers (NumPy scalars, 0-d arrays and tensors included) become Python floats; bools, text and
    everything that is not one number are left to the validator, which names the field."""
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)) or not hasattr(value, "__float__"):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _plain_bool(value):
    """NumPy booleans become Python bools."""
    return bool(value) if isinstance(value, np.bool_) else value


def _int_at_least(low: int, owner: str = "AttentionDescriptor"):
    def check(_, attribute, value):
        if not _is_int(value) or value < low:
            raise InvalidDescriptor(attribute.name, value, f"an integer >= {low}", owner)
    return check


def _int_between(low: int, high: int):
    def check(_, attribute, value):
        if not _is_int(value) or not low <= value <= high:
            raise InvalidDescriptor(attribute.name, value, f"an integer in [{low}, {high}]")
    return check


def _one_of(allowed: tuple):
    def check(_, attribute, value):
        if value not in allowed:
            raise InvalidDescriptor(attribute.name, value, f"one of {', '.join(map(repr, allowed))}")
    return check


def _boolean(_, attribute, value):
    if not isinstance(value, bool):
        raise InvalidDescriptor(attribute.name, value, "True or False")


def _finite_float(low: float = -math.inf, high: float = math.inf, *, closed_high=True, what=None):
    def check(_, attribute, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and low <= value and (value <= high if closed_high else value < high)
        if not ok:
            bracket = "]" if closed_high else ")"
            raise InvalidDescriptor(attribute.name, value, what or f"a finite number in [{low}, {high}{bracket}")
    return check


def _window_pair(value):
    if isinstance(value, (list, tuple)):
        return tuple(_plain_int(v) for v in value)
    return value


def _window_valid(_, attribute, value):
    if not (isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) and v >= -1 for v in value)):
        raise InvalidDescriptor(attribute.name, value, "a pair (left, right) of integers >= -1 (-1 = unbounded)")


@attrs.frozen
class PagedKV:
    """A paged KV cache: caches of `[num_pages, page_size, heads_kv, dim]` and a block table."""

    page_size: int = attrs.field(converter=_plain_int, validator=_int_at_least(1, "PagedKV"))
    max_pages_per_seq: int = attrs.field(converter=_plain_int, validator=_int_at_least(1, "PagedKV"))


def _paged_valid(_, attribute, value):
    if value is not None and not isinstance(value, PagedKV):
        raise InvalidDescriptor(attribute.name, value, "None or attnplan.PagedKV(page_size, max_pages_per_seq)")


@attrs.frozen(kw_only=True, cache_hash=True)     # hashed on every call (plan caches key on it)
class AttentionDescriptor:
    """Everything that decides which kernel may run an attention problem.

    For varlen (`layout="thd"`), `seqlen_q` / `seqlen_kv` are the maximum sequence lengths.
    For paged KV, `seqlen_kv` is the maximum key length of a sequence.
    """

    # 0 in any of these three is an empty problem: a no-op with defined outputs (see `is_empty`).
    batch: int = attrs.field(converter=_plain_int, validator=_int_at_least(0))
    seqlen_q: int = attrs.field(converter=_plain_int, validator=_int_at_least(0))
    seqlen_kv: int = attrs.field(converter=_plain_int, validator=_int_at_least(0))
    heads_q: int = attrs.field(converter=_plain_int, validator=_int_at_least(1))
    heads_kv: int = attrs.field(converter=_plain_int, validator=_int_at_least(1))
    head_dim: int = attrs.field(converter=_plain_int, validator=_int_between(1, MAX_HEAD_DIM))
    head_dim_v: int = attrs.field(converter=_plain_int, validator=_int_between(1, MAX_HEAD_DIM))
    dtype: str = attrs.field(default="bf16", converter=as_dtype_name, validator=_one_of(DTYPE_NAMES))
    # The dtype of `out`: the input dtype, or bf16 (the default) / the input's own fp8 type for fp8 inputs.
    out_dtype: str = attrs.field(converter=as_dtype_name, validator=_one_of(DTYPE_NAMES))
    layout: str = attrs.field(default="bshd", validator=_one_of(LAYOUTS))
    scale: float = attrs.field(converter=_plain_float, validator=_finite_float(what="a finite number"))
    causal: bool = attrs.field(default=False, converter=_plain_bool, validator=_boolean)
    causal_alignment: str = attrs.field(default="bottom_right", validator=_one_of(CAUSAL_ALIGNMENTS))
    window: tuple = attrs.field(default=(-1, -1), converter=_window_pair, validator=_window_valid)
    sink_tokens: int = attrs.field(default=0, converter=_plain_int, validator=_int_at_least(0))
    sink_logits: bool = attrs.field(default=False, converter=_plain_bool, validator=_boolean)
    alibi: bool = attrs.field(default=False, converter=_plain_bool, validator=_boolean)
    # An additive score bias given per call.
    bias: bool = attrs.field(default=False, converter=_plain_bool, validator=_boolean)
    softcap: float = attrs.field(default=0.0, converter=_plain_float, validator=_finite_float(0.0))
    dropout_p: float = attrs.field(default=0.0, converter=_plain_float,
                                   validator=_finite_float(0.0, 1.0, closed_high=False))
    varlen: bool = attrs.field(converter=_plain_bool, validator=_boolean)
    paged: Optional[PagedKV] = attrs.field(default=None, validator=_paged_valid)
    return_lse: bool = attrs.field(default=False, converter=_plain_bool, validator=_boolean)
    deterministic: bool = attrs.field(default=False, converter=_plain_bool, validator=_boolean)
    direction: str = attrs.field(default="forward", validator=_one_of(DIRECTIONS))

    @out_dtype.default
    def _out_dtype_default(self):
        return output_dtype(self.dtype) if self.dtype in DTYPE_NAMES else self.dtype

    @head_dim_v.default
    def _head_dim_v_default(self):
        return self.head_dim

    @scale.default
    def _scale_default(self):
        # Defaults run before validators: a bad head_dim must reach its own validator, not divide by 0.
        valid = isinstance(self.head_dim, int) and not isinstance(self.head_dim, bool) and self.head_dim > 0
        return 1.0 / math.sqrt(self.head_dim) if valid else 1.0

    @varlen.default
    def _varlen_default(self):
        return self.layout == "thd"

    def __attrs_post_init__(self):
        if self.heads_q % self.heads_kv:
            raise InvalidDescriptor("heads_kv", self.heads_kv,
                                    f"a divisor of heads_q={self.heads_q} (heads_q % heads_kv must be 0)")
        if self.varlen != (self.layout == "thd"):
            raise InvalidDescriptor("varlen", self.varlen,
                                    f"{self.layout == 'thd'} for layout={self.layout!r} (varlen means layout 'thd')")
        allowed_out = (output_dtype(self.dtype),) + ((self.dtype,) if self.dtype in FP8_DTYPES else ())
        if self.out_dtype not in allowed_out:
            raise InvalidDescriptor("out_dtype", self.out_dtype,
                                    f"one of {allowed_out} for dtype={self.dtype!r}")
        left, right = self.window
        if self.causal and right > 0:
            raise InvalidDescriptor("window", self.window,
                                    "a right side of -1 or 0 with causal=True (causality already bounds it)")
        if self.sink_tokens and left < 0:
            raise InvalidDescriptor("sink_tokens", self.sink_tokens,
                                    "0 unless the window has a left bound (sink tokens only matter past it)")
        if self.bias and (self.varlen or self.paged is not None or self.dtype in FP8_DTYPES):
            raise InvalidDescriptor("bias", self.bias, "False with varlen, paged KV or fp8 (a bias is a dense "
                                                       "[batch or 1, heads_q or 1, seqlen_q, seqlen_kv] array)")
        if self.paged is not None:
            if self.layout == "bhsd":
                raise InvalidDescriptor("layout", self.layout, "'bshd' or 'thd' with paged KV")
            if self.paged.page_size * self.paged.max_pages_per_seq < self.seqlen_kv:
                raise InvalidDescriptor(
                    "paged", self.paged,
                    f"page_size * max_pages_per_seq >= seqlen_kv={self.seqlen_kv}")
        if self.direction == "backward":
            if self.dtype in FP8_DTYPES:
                raise InvalidDescriptor("direction", self.direction, "'forward' for fp8 dtypes (no fp8 backward)")
            if self.paged is not None:
                raise InvalidDescriptor("direction", self.direction, "'forward' with paged KV (no paged backward)")

    # -- derived facts -------------------------------------------------------------------------

    @property
    def group_size(self) -> int:
        """Query heads per kv head (1 = MHA, heads_q = MQA)."""
        return self.heads_q // self.heads_kv

    @property
    def is_empty(self) -> bool:
        """No query or no key: a no-op (out is empty or zeros, LSE -inf)."""
        return 0 in (self.batch, self.seqlen_q, self.seqlen_kv)

    @property
    def has_window(self) -> bool:
        return self.window != (-1, -1)

    @property
    def is_fp8(self) -> bool:
        return self.dtype in FP8_DTYPES

    def replace(self, **changes) -> "AttentionDescriptor":
        """A copy with `changes`; fields left at their derived defaults (head_dim_v, out_dtype, scale, varlen)
        are derived again from the new values unless given."""
        derived = {"head_dim_v": self.head_dim_v == self.head_dim,
                   "out_dtype": self.out_dtype == output_dtype(self.dtype),
                   "scale": self.scale == 1.0 / math.sqrt(self.head_dim),
                   "varlen": self.varlen == (self.layout == "thd")}
        fields = {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}
        for name, was_default in derived.items():
            if was_default and name not in changes:
                del fields[name]
        fields.update(changes)
        return type(self)(**fields)

    def to_dict(self) -> dict:
        data = attrs.asdict(self, recurse=True)
        data["window"] = list(self.window)
        return data

    def flops(self) -> float:
        """FLOPs by the usual convention: 4*b*h*sq*skv*d, halved for causal, x2.5 backward."""
        head_dim_mean = (self.head_dim + self.head_dim_v) / 2
        total = 4.0 * self.batch * self.heads_q * self.seqlen_q * self.seqlen_kv * head_dim_mean
        if self.causal:
            total /= 2
        return total * (2.5 if self.direction == "backward" else 1.0)
