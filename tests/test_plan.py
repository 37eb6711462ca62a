"""Plan selection, explain reasons, SKU pinning, argument checks, and the SKU's JSON form."""

import json

import numpy as np
import pytest

import attnplan
from attnplan import (AttentionDescriptor, InvalidArguments, KernelSku, NoPlanError, PagedKV, Plan,
                      SkuMismatch, explain)
from attnplan.sku import PrecisionGuarantee

DESC = AttentionDescriptor(batch=2, seqlen_q=9, seqlen_kv=11, heads_q=4, heads_kv=2, head_dim=16, dtype="f32",
                           causal=True, return_lse=True)


def arrays(desc=DESC, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((desc.batch, desc.seqlen_q, desc.heads_q, desc.head_dim)).astype(np.float32)
    k = rng.standard_normal((desc.batch, desc.seqlen_kv, desc.heads_kv, desc.head_dim)).astype(np.float32)
    v = rng.standard_normal((desc.batch, desc.seqlen_kv, desc.heads_kv, desc.head_dim_v)).astype(np.float32)
    return dict(q=q, k=k, v=v)


def test_cpu_selects_the_reference_and_explains_every_backend():
    plan = Plan.select(DESC, "cpu")
    assert plan.sku.backend == "reference"
    verdicts = explain(DESC, "cpu")
    names = [v.backend for v in verdicts]
    assert "nvrtc" in names and "reference" in names
    nvrtc = next(v for v in verdicts if v.backend == "nvrtc")
    assert not nvrtc.accepted and any("cpu" in r for r in nvrtc.reasons) and nvrtc.kernel == "-"
    table = str(verdicts)
    assert "nvrtc" in table and "reference" in table and "accepted" in table


def test_described_gpu_gives_feature_reasons():
    f64 = DESC.replace(dtype="f64")
    nvrtc = next(v for v in explain(f64, "sm_90") if v.backend == "nvrtc")
    assert not nvrtc.accepted and any("'f64'" in r for r in nvrtc.reasons)
    odd = DESC.replace(dtype="bf16", head_dim=20)
    nvrtc = next(v for v in explain(odd, "sm_90") if v.backend == "nvrtc")
    assert not nvrtc.accepted and any("head" in r for r in nvrtc.reasons)
    old = next(v for v in explain(DESC.replace(dtype="bf16"), "sm_75") if v.backend == "nvrtc")
    assert not old.accepted and any("sm_80" in r for r in old.reasons)


def test_no_plan_error_lists_every_backend_and_reason():
    with pytest.raises(NoPlanError) as info:
        Plan.select(DESC, "cpu", prefer=["nvrtc"], restrict=True)
    message = str(info.value)
    assert "nvrtc" in message and "cpu" in message
    assert [v.backend for v in info.value.verdicts] == ["nvrtc"]


def test_prefer_orders_and_unknown_backend_is_named():
    assert Plan.select(DESC, "cpu", prefer=["reference"]).sku.backend == "reference"
    with pytest.raises((KeyError, ValueError, NoPlanError)) as info:
        Plan.select(DESC, "cpu", prefer=["nonexistent"], restrict=True)
    assert "nonexistent" in str(info.value)


def test_run_matches_attention_and_returns_shapes():
    plan = Plan.select(DESC, "cpu")
    args = arrays()
    out, lse = plan.run(**args)
    assert out.shape == (2, 9, 4, 16) and out.dtype == np.float32
    assert lse.shape == (2, 4, 9) and lse.dtype == np.float32
    again = attnplan.attention(**args, causal=True, return_lse=True)
    np.testing.assert_array_equal(out, again[0])


def test_out_buffer_is_written_in_place():
    args = arrays()
    out = np.full((2, 9, 4, 16), np.nan, dtype=np.float32)
    result = Plan.select(DESC, "cpu").run(out=out, **args)
    assert result.out is out and np.isfinite(out).all()


def test_outer_strides_are_accepted():
    args = arrays(DESC.replace(seqlen_q=18))
    strided = dict(args, q=args["q"][:, ::2])             # a non-contiguous view, unit head-dim stride
    out = Plan.select(DESC, "cpu").run(**strided).out
    want = Plan.select(DESC, "cpu").run(**dict(args, q=np.ascontiguousarray(args["q"][:, ::2]))).out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("name,change,needle", [
    ("q", lambda a: dict(a, q=a["q"][..., :8]), "shape"),
    ("k", lambda a: dict(a, k=a["k"][:, :5]), "shape"),
    ("v", lambda a: dict(a, v=a["v"].astype(np.float64)), "dtype"),
    ("q", lambda a: dict(a, q=np.asfortranarray(a["q"])), "stride"),
    ("out", lambda a: dict(a, out=np.zeros((2, 9, 4, 8), np.float32)), "shape"),
    ("lse", lambda a: dict(a, lse=np.zeros((2, 4, 9), np.float64)), "dtype"),
    ("q", lambda a: dict(a, q=[[1.0]]), "NumPy"),
])
def test_bad_arguments_name_the_argument(name, change, needle):
    plan = Plan.select(DESC, "cpu")
    with pytest.raises(InvalidArguments) as info:
        plan.can_implement(**change(arrays()))
    assert info.value.argument == name and needle.lower() in str(info.value).lower(), str(info.value)


def test_varlen_and_paged_index_arguments_are_checked():
    desc = AttentionDescriptor(batch=2, seqlen_q=5, seqlen_kv=6, heads_q=2, heads_kv=2, head_dim=8, dtype="f32",
                               layout="thd")
    q = np.zeros((8, 2, 8), np.float32)
    k = v = np.zeros((9, 2, 8), np.float32)
    plan = Plan.select(desc, "cpu")
    good = dict(q=q, k=k, v=v, cu_seqlens_q=np.array([0, 5, 8], np.int32), cu_seqlens_kv=np.array([0, 6, 9], np.int32))
    plan.can_implement(**good)
    for name, value in (("cu_seqlens_q", None), ("cu_seqlens_q", np.array([0, 5, 8], np.int64)),
                        ("cu_seqlens_q", np.array([0, 8], np.int32)), ("cu_seqlens_kv", np.array([0, 7, 6], np.int32))):
        with pytest.raises(InvalidArguments) as info:
            plan.can_implement(**dict(good, **{name: value}))
        assert info.value.argument == name
    paged = AttentionDescriptor(batch=2, seqlen_q=3, seqlen_kv=8, heads_q=2, heads_kv=2, head_dim=8, dtype="f32",
                                paged=PagedKV(4, 2))
    plan = Plan.select(paged, "cpu")
    base = dict(q=np.zeros((2, 3, 2, 8), np.float32), k=np.zeros((4, 4, 2, 8), np.float32),
                v=np.zeros((4, 4, 2, 8), np.float32), block_table=np.array([[0, 1], [2, 3]], np.int32),
                seqlens_kv=np.array([8, 5], np.int32))
    plan.can_implement(**base)
    for name, value in (("block_table", None), ("block_table", np.array([[0, 1]], np.int32)),
                        ("block_table", np.array([[0, 9], [2, 3]], np.int32)), ("seqlens_kv", None),
                        ("seqlens_kv", np.array([9, 5], np.int32))):
        with pytest.raises(InvalidArguments) as info:
            plan.can_implement(**dict(base, **{name: value}))
        assert info.value.argument == name


def test_feature_arguments_are_required():
    for fields, name in ((dict(alibi=True), "alibi_slopes"), (dict(sink_logits=True), "sink_logits"),
                         (dict(dropout_p=0.1), "dropout_seed")):
        plan = Plan.select(DESC.replace(**fields), "cpu")
        with pytest.raises(InvalidArguments) as info:
            plan.can_implement(**arrays())
        assert info.value.argument == name
    plan = Plan.select(DESC.replace(alibi=True), "cpu")
    with pytest.raises(InvalidArguments) as info:
        plan.can_implement(**arrays(), alibi_slopes=np.ones(3, np.float32))
    assert info.value.argument == "alibi_slopes"


def test_backward_plan_returns_gradients_of_input_shapes():
    desc = DESC.replace(direction="backward", sink_logits=True)
    fwd = Plan.select(desc.replace(direction="forward"), "cpu")
    args = arrays()
    sinks = np.zeros(4, np.float32)
    out, lse = fwd.run(**args, sink_logits=sinks)
    grads = Plan.select(desc, "cpu").run(**args, out=out, lse=lse, dout=np.ones_like(out), sink_logits=sinks)
    assert [g.shape for g in grads] == [(2, 9, 4, 16), (2, 11, 2, 16), (2, 11, 2, 16), (4,)]


def test_sku_json_round_trip_and_pinning():
    plan = Plan.select(DESC, "cpu")
    sku = plan.sku
    assert sku.precision.deterministic and sku.precision.math_precision == "f64"
    text = sku.to_json()
    assert json.loads(text)["backend"] == "reference"
    again = KernelSku.from_json(text)
    assert again == sku and again.config_dict == sku.config_dict and again.versions_dict == sku.versions_dict
    pinned = Plan.from_sku(DESC, again, "cpu")
    assert pinned.sku.identity() == sku.identity()
    f32 = Plan.from_sku(DESC, KernelSku.from_dict({**sku.to_dict(), "config": {"compute": "f32",
                                                                               "emulate_dtype": False}}), "cpu")
    assert f32.sku.precision.math_precision == "f32"
    with pytest.raises(SkuMismatch, match="dtype"):
        Plan.from_sku(DESC.replace(dtype="f64"), sku, "cpu")
    with pytest.raises(SkuMismatch, match="nvrtc"):
        Plan.from_sku(DESC, KernelSku.from_dict({**sku.to_dict(), "backend": "nvrtc"}), "cpu")
    with pytest.raises(SkuMismatch):
        Plan.from_sku(DESC, KernelSku.from_dict({**sku.to_dict(), "backend": "nope"}), "cpu")
    with pytest.raises((ValueError, KeyError, TypeError)):
        KernelSku.from_json('{"backend": "reference"}')
    assert plan.workspace_size == 0


def test_precision_guarantee_is_frozen():
    p = PrecisionGuarantee(math_precision="f32", accumulator="f32", deterministic=True, bit_stable=True)
    with pytest.raises(Exception):
        p.deterministic = False
