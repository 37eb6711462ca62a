"""AttentionDescriptor: every validation error names the field, the value and what is allowed;
defaults; immutability; derived facts."""

import math

import attrs
import pytest

from attnplan import AttentionDescriptor, InvalidDescriptor, PagedKV

BASE = dict(batch=2, seqlen_q=16, seqlen_kv=16, heads_q=4, heads_kv=2, head_dim=64)


def make(**changes):
    return AttentionDescriptor(**{**BASE, **changes})


BAD = [
    ("batch", dict(batch=0), "integer >= 1"),
    ("batch", dict(batch=2.0), "integer"),
    ("batch", dict(batch=True), "integer"),
    ("seqlen_q", dict(seqlen_q=-3), ">= 1"),
    ("seqlen_kv", dict(seqlen_kv=0), ">= 1"),
    ("heads_q", dict(heads_q=0), ">= 1"),
    ("heads_kv", dict(heads_kv=3), "divisor of heads_q"),
    ("head_dim", dict(head_dim=0), "[1, 256]"),
    ("head_dim", dict(head_dim=257), "[1, 256]"),
    ("head_dim_v", dict(head_dim_v=300), "[1, 256]"),
    ("dtype", dict(dtype="fp16"), "'f16'"),
    ("layout", dict(layout="sbhd"), "'bshd'"),
    ("scale", dict(scale=float("nan")), "finite"),
    ("causal", dict(causal=1), "True or False"),
    ("causal_alignment", dict(causal_alignment="center"), "'bottom_right'"),
    ("window", dict(window=(-2, 0)), "integers >= -1"),
    ("window", dict(window=(3,)), "pair"),
    ("window", dict(causal=True, window=(8, 4)), "right side of -1 or 0 with causal"),
    ("sink_tokens", dict(sink_tokens=-1), ">= 0"),
    ("sink_tokens", dict(sink_tokens=4), "left bound"),
    ("sink_logits", dict(sink_logits="yes"), "True or False"),
    ("alibi", dict(alibi=None), "True or False"),
    ("softcap", dict(softcap=-1.0), "[0.0"),
    ("dropout_p", dict(dropout_p=1.0), "[0.0, 1.0)"),
    ("dropout_p", dict(dropout_p=-0.1), "[0.0, 1.0)"),
    ("varlen", dict(varlen=True), "layout 'thd'"),
    ("varlen", dict(layout="thd", varlen=False), "layout 'thd'"),
    ("paged", dict(paged=(16, 4)), "PagedKV"),
    ("paged", dict(paged=PagedKV(4, 2)), "page_size * max_pages_per_seq >= seqlen_kv"),
    ("layout", dict(layout="bhsd", paged=PagedKV(16, 1)), "with paged KV"),
    ("direction", dict(direction="both"), "'forward'"),
    ("direction", dict(dtype="e4m3", direction="backward"), "no fp8 backward"),
    ("direction", dict(paged=PagedKV(16, 1), direction="backward"), "no paged backward"),
    ("return_lse", dict(return_lse=0), "True or False"),
    ("deterministic", dict(deterministic="no"), "True or False"),
]


@pytest.mark.parametrize("field,changes,allowed", BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_invalid_values_name_field_value_and_allowed(field, changes, allowed):
    with pytest.raises(InvalidDescriptor) as info:
        make(**changes)
    error = info.value
    assert error.field == field
    message = str(error)
    assert f"AttentionDescriptor.{field}=" in message and allowed in message, message


def test_paged_kv_values_are_validated():
    with pytest.raises((InvalidDescriptor, ValueError, TypeError)) as info:
        PagedKV(0, 4)
    assert "page_size" in str(info.value)
    with pytest.raises((InvalidDescriptor, ValueError, TypeError)) as info:
        PagedKV(16, 0)
    assert "max_pages_per_seq" in str(info.value)


def test_defaults_and_derived_facts():
    d = make()
    assert d.head_dim_v == 64 and d.scale == pytest.approx(1 / math.sqrt(64))
    assert d.dtype == "bf16" and d.layout == "bshd" and d.window == (-1, -1) and not d.varlen
    assert d.group_size == 2 and not d.has_window
    assert make(layout="thd").varlen
    assert make(window=(8, -1)).has_window
    assert d.flops() == 4 * 2 * 4 * 16 * 16 * 64
    assert make(causal=True).flops() == d.flops() / 2
    assert make(direction="backward").flops() == 2.5 * d.flops()


def test_frozen_hashable_and_replace():
    d = make()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        d.batch = 3
    assert d == make() and hash(d) == hash(make()) and d != make(causal=True)
    e = d.replace(causal=True)
    assert e.causal and not d.causal
    with pytest.raises(InvalidDescriptor):
        d.replace(heads_kv=3)
    data = d.to_dict()
    assert data["batch"] == 2 and data["window"] == [-1, -1] and data["paged"] is None
