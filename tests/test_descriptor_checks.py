"""AttentionDescriptor validation, one check at a time (attnplan/descriptor.py): every error path
raises InvalidDescriptor whose `.field`, `.value` and `.allowed` name the culprit, and whose
message carries all three.  Also immutability, defaults, replace(), to_dict(), flops(), hashing."""

import json
import math

import attrs
import pytest

import attnplan
from attnplan import AttentionDescriptor, AttnPlanError, InvalidDescriptor, PagedKV
from attnplan.dtypes import DTYPE_NAMES

BASE = dict(batch=2, seqlen_q=8, seqlen_kv=12, heads_q=4, heads_kv=2, head_dim=16, dtype="f32")
ALIGNMENTS = ("bottom_right", "top_left")
LAYOUTS = ("bshd", "bhsd", "thd")
DIRECTIONS = ("forward", "backward")


def make(**changes):
    return AttentionDescriptor(**{**BASE, **changes})


def rejected(field, **changes) -> InvalidDescriptor:
    """The error `make(**changes)` raises; checks it names `field`, the value and what is allowed."""
    with pytest.raises(InvalidDescriptor) as info:
        make(**changes)
    error = info.value
    assert error.field == field, (error.field, str(error))
    assert isinstance(error.allowed, str) and error.allowed
    message = str(error)
    assert message.startswith(f"AttentionDescriptor.{field}={error.value!r} is invalid"), message
    assert error.allowed in message
    return error


# -- integer fields ---------------------------------------------------------------------------

COUNT_FIELDS = ("batch", "seqlen_q", "seqlen_kv", "heads_q", "heads_kv")
NOT_INTEGERS = [2.0, True, "2", None, 1.5]


EMPTY_FIELDS = ("batch", "seqlen_q", "seqlen_kv")      # 0 is an empty problem (a no-op)


@pytest.mark.parametrize("field", COUNT_FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_counts_must_be_positive(field, value):
    if field in EMPTY_FIELDS and value == 0:
        assert getattr(make(**{field: 0}), field) == 0
        return
    error = rejected(field, **{field: value})
    least = 0 if field in EMPTY_FIELDS else 1
    assert error.value == value and f"integer >= {least}" in error.allowed


@pytest.mark.parametrize("field", COUNT_FIELDS + ("head_dim", "head_dim_v", "sink_tokens"))
@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
def test_integer_fields_reject_other_types(field, value):
    error = rejected(field, **{field: value})
    assert error.value is value and "integer" in error.allowed


@pytest.mark.parametrize("field", ("head_dim", "head_dim_v"))
@pytest.mark.parametrize("value", [0, -4, 257, 512])
def test_head_dims_must_lie_in_1_to_256(field, value):
    error = rejected(field, **{field: value})
    assert error.value == value and error.allowed == "an integer in [1, 256]"


@pytest.mark.parametrize("field", ("head_dim", "head_dim_v"))
@pytest.mark.parametrize("value", [1, 256])
def test_head_dim_bounds_are_inclusive(field, value):
    assert getattr(make(**{field: value}), field) == value


def test_heads_q_must_be_a_multiple_of_heads_kv():
    error = rejected("heads_kv", heads_q=6, heads_kv=4)
    assert error.value == 4 and "heads_q=6" in error.allowed and "divisor" in error.allowed
    assert make(heads_q=6, heads_kv=3).group_size == 2
    assert make(heads_q=6, heads_kv=1).group_size == 6     # MQA
    rejected("heads_kv", heads_q=2, heads_kv=4)             # more kv heads than q heads


def test_sink_tokens_cannot_be_negative():
    error = rejected("sink_tokens", sink_tokens=-1, window=(4, 0))
    assert error.allowed == "an integer >= 0"


# -- string choices ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, allowed, bad", [
    ("dtype", DTYPE_NAMES, ["fp16", "float16", "F32", "", "int8"]),
    ("layout", LAYOUTS, ["sbhd", "BSHD", "paged"]),
    ("causal_alignment", ALIGNMENTS, ["center", "bottom-right", "top"]),
    ("direction", DIRECTIONS, ["both", "fwd", "Forward"]),
])
def test_choices_list_every_allowed_value(field, allowed, bad):
    for value in bad:
        error = rejected(field, **{field: value})
        assert error.value == value
        for name in allowed:
            assert repr(name) in str(error), (name, str(error))
    for value in allowed:                                   # every listed value is accepted
        extra = {"varlen": True} if value == "thd" else {}
        assert getattr(make(**{field: value}, **extra), field) == value


@pytest.mark.parametrize("field", ("dtype", "layout", "causal_alignment", "direction"))
def test_choices_reject_non_strings(field):
    for value in (None, 1, ["f32"]):
        assert rejected(field, **{field: value}).value == value


# -- booleans ---------------------------------------------------------------------------------

BOOL_FIELDS = ("causal", "sink_logits", "alibi", "return_lse", "deterministic", "varlen")


@pytest.mark.parametrize("field", BOOL_FIELDS)
@pytest.mark.parametrize("value", [1, 0, "yes", None], ids=repr)
def test_booleans_must_be_bool(field, value):
    error = rejected(field, **{field: value})
    assert error.value is value and error.allowed == "True or False"


# -- floats -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "0.1", None], ids=repr)
def test_scale_must_be_a_finite_number(value):
    error = rejected("scale", scale=value)
    assert error.allowed == "a finite number"


@pytest.mark.parametrize("value", [-1.0, -1e-9, math.nan, math.inf, True, "1"], ids=repr)
def test_softcap_must_be_finite_and_not_negative(value):
    error = rejected("softcap", softcap=value)
    assert "finite number" in error.allowed and "[0.0" in error.allowed


@pytest.mark.parametrize("value", [1.0, 1, 1.5, -0.1, -1e-12, math.nan, True], ids=repr)
def test_dropout_p_must_lie_in_zero_to_one_open(value):
    error = rejected("dropout_p", dropout_p=value)
    assert error.allowed == "a finite number in [0.0, 1.0)"


def test_float_fields_accept_boundary_and_integer_values():
    assert make(softcap=0).softcap == 0 and make(softcap=50.0).softcap == 50.0
    assert make(dropout_p=0).dropout_p == 0 and make(dropout_p=0.999).dropout_p == 0.999
    assert make(scale=2).scale == 2


# -- window and sinks -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [(-2, 0), (0, -2), (-5, -5), (1.0, 2), (True, 0), (1,), (1, 2, 3), None, "ab",
                                   (None, 1)], ids=repr)
def test_window_must_be_a_pair_of_integers_at_least_minus_one(value):
    error = rejected("window", window=value)
    assert "integers >= -1" in error.allowed and "-1 = unbounded" in error.allowed


def test_window_list_is_converted_to_a_tuple():
    d = make(window=[3, 2])
    assert d.window == (3, 2) and isinstance(d.window, tuple) and d == make(window=(3, 2))


@pytest.mark.parametrize("right", [1, 5])
def test_causal_window_right_side_must_be_minus_one_or_zero(right):
    error = rejected("window", causal=True, window=(3, right))
    assert error.value == (3, right) and "causal=True" in error.allowed
    for ok in (-1, 0):
        assert make(causal=True, window=(3, ok)).window == (3, ok)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 4)])
def test_sink_tokens_need_a_left_window_bound(window):
    error = rejected("sink_tokens", sink_tokens=2, window=window)
    assert error.value == 2 and "left bound" in error.allowed
    assert make(sink_tokens=2, window=(0, window[1])).sink_tokens == 2


# -- varlen, layout, paged ----------------------------------------------------------------------

def test_varlen_follows_layout():
    assert make(layout="thd").varlen is True
    assert make(layout="bshd").varlen is False and make(layout="bhsd").varlen is False
    error = rejected("varlen", varlen=True)
    assert error.value is True and "layout='bshd'" in error.allowed
    error = rejected("varlen", layout="thd", varlen=False)
    assert error.value is False and "layout='thd'" in error.allowed
    rejected("varlen", layout="bhsd", varlen=True)


@pytest.mark.parametrize("value", [(16, 4), {"page_size": 16, "max_pages_per_seq": 4}, 16, "paged"], ids=repr)
def test_paged_must_be_none_or_paged_kv(value):
    error = rejected("paged", paged=value)
    assert "PagedKV" in error.allowed and error.value == value


@pytest.mark.parametrize("field, args", [("page_size", (0, 4)), ("page_size", (-1, 4)), ("page_size", (2.0, 4)),
                                         ("page_size", (True, 4)), ("max_pages_per_seq", (4, 0)),
                                         ("max_pages_per_seq", (4, None))])
def test_paged_kv_fields_are_validated(field, args):
    with pytest.raises(InvalidDescriptor) as info:
        PagedKV(*args)
    assert info.value.field == field and "integer >= 1" in str(info.value)


def test_paged_capacity_must_cover_seqlen_kv():
    error = rejected("paged", seqlen_kv=12, paged=PagedKV(4, 2))
    assert error.value == PagedKV(4, 2) and "seqlen_kv=12" in error.allowed
    assert "page_size * max_pages_per_seq" in error.allowed
    assert make(seqlen_kv=12, paged=PagedKV(4, 3)).paged == PagedKV(4, 3)      # exactly enough
    assert make(seqlen_kv=12, paged=PagedKV(16, 1)).paged.page_size == 16


def test_paged_kv_layouts():
    error = rejected("layout", layout="bhsd", paged=PagedKV(16, 1))
    assert error.value == "bhsd" and "with paged KV" in error.allowed
    d = make(layout="thd", paged=PagedKV(16, 1))        # varlen queries over a paged cache
    assert d.varlen and d.paged.page_size == 16


# -- backward restrictions --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["e4m3", "e5m2"])
def test_no_fp8_backward(dtype):
    error = rejected("direction", dtype=dtype, direction="backward")
    assert error.value == "backward" and "fp8" in error.allowed
    assert make(dtype=dtype).is_fp8


def test_no_paged_backward():
    error = rejected("direction", paged=PagedKV(16, 1), direction="backward")
    assert "paged" in error.allowed


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32", "f64"])
def test_backward_is_fine_for_other_dtypes(dtype):
    assert make(dtype=dtype, direction="backward").direction == "backward"


def test_errors_are_attnplan_and_value_errors():
    with pytest.raises(InvalidDescriptor) as info:
        make(batch=-1)
    assert isinstance(info.value, AttnPlanError) and isinstance(info.value, ValueError)
    assert attnplan.InvalidDescriptor is InvalidDescriptor


def test_missing_required_field_is_a_type_error():
    with pytest.raises(TypeError, match="head_dim"):
        AttentionDescriptor(batch=1, seqlen_q=1, seqlen_kv=1, heads_q=1, heads_kv=1)
    with pytest.raises(TypeError):
        AttentionDescriptor(1, 1, 1, 1, 1, 8)          # keyword-only


# -- the value object -------------------------------------------------------------------------

def test_frozen():
    d = make()
    for field, value in (("batch", 3), ("causal", True), ("scale", 1.0), ("window", (1, 1))):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(d, field, value)
    assert d.batch == 2 and d.window == (-1, -1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        PagedKV(4, 2).page_size = 8


def test_defaults():
    d = AttentionDescriptor(batch=1, seqlen_q=3, seqlen_kv=5, heads_q=2, heads_kv=1, head_dim=64)
    assert d.head_dim_v == 64
    assert d.scale == 1.0 / math.sqrt(64) == 0.125
    assert make(head_dim=48).scale == pytest.approx(1 / math.sqrt(48), rel=1e-15)
    assert make(head_dim=48, head_dim_v=32).scale == make(head_dim=48).scale      # scale follows head_dim only
    assert make(head_dim=48, head_dim_v=32).head_dim_v == 32
    assert make(scale=0.3).scale == 0.3
    assert (d.dtype, d.layout, d.causal, d.causal_alignment, d.window) == ("bf16", "bshd", False, "bottom_right",
                                                                            (-1, -1))
    assert (d.sink_tokens, d.sink_logits, d.alibi, d.softcap, d.dropout_p) == (0, False, False, 0.0, 0.0)
    assert (d.varlen, d.paged, d.return_lse, d.deterministic, d.direction) == (False, None, False, False, "forward")
    assert d.group_size == 2 and not d.has_window and not d.is_fp8


def test_replace_validates_and_leaves_the_original_alone():
    d = make()
    e = d.replace(causal=True, window=[4, 0])
    assert e.causal and e.window == (4, 0) and not d.causal and d.window == (-1, -1)
    assert e.replace(causal=False, window=(-1, -1)) == d
    with pytest.raises(InvalidDescriptor) as info:
        d.replace(heads_kv=3)
    assert info.value.field == "heads_kv"
    with pytest.raises(InvalidDescriptor) as info:
        e.replace(window=(4, 2))                       # still causal
    assert info.value.field == "window"
    with pytest.raises(TypeError):
        d.replace(no_such_field=1)


def test_to_dict_is_json_and_rebuilds_the_descriptor():
    d = make(causal=True, window=(3, 0), sink_tokens=1, softcap=2.5, alibi=True, return_lse=True)
    data = d.to_dict()
    assert set(data) == {f.name for f in attrs.fields(AttentionDescriptor)}
    assert data["window"] == [3, 0] and data["scale"] == d.scale and data["paged"] is None
    assert json.loads(json.dumps(data)) == data
    assert AttentionDescriptor(**data) == d
    paged = make(layout="thd", paged=PagedKV(4, 3)).to_dict()
    assert paged["paged"] == {"page_size": 4, "max_pages_per_seq": 3} and paged["varlen"] is True
    assert AttentionDescriptor(**{**paged, "paged": PagedKV(**paged["paged"])}).paged == PagedKV(4, 3)


def test_flops():
    d = make(batch=3, seqlen_q=5, seqlen_kv=7, heads_q=4, heads_kv=1, head_dim=16)
    assert d.flops() == 4 * 3 * 4 * 5 * 7 * 16
    assert d.replace(causal=True).flops() == d.flops() / 2
    assert d.replace(direction="backward").flops() == 2.5 * d.flops()
    assert d.replace(direction="backward", causal=True).flops() == 1.25 * d.flops()
    assert d.replace(head_dim_v=48).flops() == 4 * 3 * 4 * 5 * 7 * 32      # mean of 16 and 48
    assert d.replace(heads_kv=4).flops() == d.flops()                       # counts query heads


def test_equality_and_hashing():
    a, b = make(), make()
    assert a == b and hash(a) == hash(b) and a is not b
    assert make(scale=1 / math.sqrt(16)) == a                  # the explicit default is the default
    assert len({a, b, make(causal=True)}) == 2
    cache = {a: "plan"}
    assert cache[b] == "plan"
    for change in (dict(batch=3), dict(dtype="f16"), dict(causal=True), dict(window=(2, 2)), dict(scale=0.5),
                   dict(return_lse=True), dict(direction="backward"), dict(paged=PagedKV(16, 1))):
        other = make(**change)
        assert other != a, change
    assert make(paged=PagedKV(16, 1)) == make(paged=PagedKV(16, 1))
    assert hash(make(paged=PagedKV(16, 1))) == hash(make(paged=PagedKV(16, 1)))


def test_derived_facts():
    assert make(window=(0, -1)).has_window and make(window=(-1, 0)).has_window and not make().has_window
    assert make(heads_q=8, heads_kv=8).group_size == 1
    assert not make(dtype="bf16").is_fp8 and make(dtype="e5m2").is_fp8


def test_replace_layout_to_thd_rederives_varlen():
    assert make().replace(layout="thd").varlen is True


def test_replace_head_dim_rederives_defaulted_head_dim_v_and_scale():
    d = make(head_dim=16)
    assert d.replace(head_dim=64) == make(head_dim=64)
