"""Plan.select / explain / from_sku / can_implement / run on the CPU (the reference backend), and
the verdicts other backends give on a CPU or on a described GPU (`Device.cuda(arch=90)`)."""

import sys

import numpy as np
import pytest

import attnplan
from attnplan import (AttentionDescriptor, AttentionResult, Device, InvalidArguments, KernelSku, NoPlanError,
                      PagedKV, Plan, SkuMismatch, explain, registry)
from attnplan.plan import Verdict

import brute_force

DESC = AttentionDescriptor(batch=2, seqlen_q=5, seqlen_kv=7, heads_q=4, heads_kv=2, head_dim=8, dtype="f32",
                           causal=True, return_lse=True)
SM90 = Device.cuda(arch=90)
NVRTC = "nvrtc.sm80"      # the sm80 kernel generation's candidate


def registered():
    return [b.name for b in registry.backends()]


def nvrtc_available() -> bool:
    try:
        from attnplan.backends.nvrtc import compiler
        compiler.nvrtc_version()
    except Exception:
        return False
    return True


def verdict_of(verdicts, name) -> Verdict:
    return next(v for v in verdicts if v.backend == name)


def qkv(desc=DESC, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if desc.layout == "bhsd":
        q_shape, kv_shape = (desc.batch, desc.heads_q, desc.seqlen_q), (desc.batch, desc.heads_kv, desc.seqlen_kv)
    else:
        q_shape, kv_shape = (desc.batch, desc.seqlen_q, desc.heads_q), (desc.batch, desc.seqlen_kv, desc.heads_kv)
    return dict(q=rng.standard_normal(q_shape + (desc.head_dim,)).astype(dtype),
                k=rng.standard_normal(kv_shape + (desc.head_dim,)).astype(dtype),
                v=rng.standard_normal(kv_shape + (desc.head_dim_v,)).astype(dtype))


# -- selection and explain ----------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", Device.cpu(), " CPU "])
def test_cpu_selects_the_reference(device):
    plan = Plan.select(DESC, device)
    assert plan.sku.backend == "reference" and plan.backend.name == "reference"
    assert plan.sku.kernel == "reference_numpy_forward" and plan.sku.arch == "cpu"
    assert plan.device.kind == "cpu" and "reference" in repr(plan)


def test_explain_lists_every_registered_backend_in_order():
    verdicts = explain(DESC, "cpu")
    names = registered()
    assert [v.backend for v in verdicts] == names
    assert NVRTC in names and names[-1] == "reference"
    for v in verdicts:
        if v.accepted:
            assert v.reasons == () and v.kernel != "-"
        else:
            assert v.reasons and all(isinstance(r, str) and r for r in v.reasons) and v.kernel == "-"
    assert verdict_of(verdicts, "reference").accepted
    assert [v.backend for v in verdicts if v.accepted] == ["reference"]
    nvrtc = verdict_of(verdicts, NVRTC)
    assert any("cpu" in r for r in nvrtc.reasons), nvrtc.reasons


def test_verdict_table_prints_every_backend_and_reason():
    verdicts = explain(DESC.replace(dtype="f64"), "cpu")
    table = str(verdicts)
    lines = table.splitlines()
    assert lines[0].split() == ["backend", "kernel", "TFLOP/s", "verdict"]
    assert len(lines) == 2 + len(registered()) and lines[-1].startswith("policy fastest: reference")
    for v in verdicts:
        line = next(line for line in lines[1:-1] if line.split()[0].lstrip("*") in (v.backend, "") and v.backend in line.split())
        if v.accepted:
            assert "accepted" in line and v.kernel in line
        else:
            for reason in v.reasons:
                assert reason in line


@pytest.mark.parametrize("device", [SM90, "sm_90", "sm90"])
def test_described_gpu_nvrtc_reasons_for_unsupported_features(device):
    cases = {
        "'f64'": DESC.replace(dtype="f64"),
        "'f32'": DESC.replace(dtype="f32"),
        "'e4m3'": DESC.replace(dtype="e4m3"),
        "head_dim=20": DESC.replace(dtype="bf16", head_dim=20, head_dim_v=20),
        "head_dim=36": DESC.replace(dtype="f16", head_dim=36, head_dim_v=36),     # not a multiple of 8
        "head_dim=16": DESC.replace(dtype="bf16", head_dim=16, head_dim_v=16),    # below the smallest tile
        "head_dim_v=20": DESC.replace(dtype="bf16", head_dim=64, head_dim_v=20),
    }
    for needle, desc in cases.items():
        nvrtc = verdict_of(explain(desc, device), NVRTC)
        assert not nvrtc.accepted and nvrtc.kernel == "-"
        assert any(needle in r for r in nvrtc.reasons), (needle, nvrtc.reasons)
        assert not any("not cpu" in r for r in nvrtc.reasons)       # the device itself is fine


def test_described_old_gpu_is_rejected_by_arch():
    nvrtc = verdict_of(explain(DESC.replace(dtype="bf16", head_dim=64, head_dim_v=64), "sm_75"), NVRTC)
    assert not nvrtc.accepted and any("sm_80" in r and "sm_75" in r for r in nvrtc.reasons)


def test_described_gpu_nvrtc_accepts_a_supported_problem():
    desc = DESC.replace(dtype="bf16", head_dim=64, head_dim_v=64)
    nvrtc = verdict_of(explain(desc, SM90), NVRTC)
    if nvrtc_available():
        assert nvrtc.accepted, nvrtc.reasons
        assert "bf16" in nvrtc.kernel and "d64" in nvrtc.kernel and "sm90" in nvrtc.kernel
    else:
        assert not nvrtc.accepted and any("nvrtc" in r.lower() for r in nvrtc.reasons)


def test_no_plan_error_lists_every_backend_with_its_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)        # the reference then has no GPU array library
    desc = DESC.replace(dtype="f64")
    with pytest.raises(NoPlanError) as info:
        Plan.select(desc, "sm_70")
    error = info.value
    assert [v.backend for v in error.verdicts] == registered()
    message = str(error)
    assert "sm_70" in message
    for v in error.verdicts:
        assert not v.accepted and v.reasons
        assert v.backend in message and all(r in message for r in v.reasons)
    assert any("CuPy" in r for r in verdict_of(error.verdicts, "reference").reasons)
    assert error.verdicts.of("reference") == verdict_of(error.verdicts, "reference")   # the planner's Verdicts
    assert isinstance(error, attnplan.AttnPlanError) and isinstance(error, RuntimeError)


def test_prefer_orders_and_restrict_limits():
    order = [v.backend for v in explain(DESC, "cpu", prefer="reference")]
    assert order[0] == "reference" and sorted(order) == sorted(registered())
    order = [v.backend for v in explain(DESC, "cpu", prefer=["reference", "nvrtc"])]      # a family name
    assert order[:2] == ["reference", NVRTC] and len(order) == len(registered())
    assert Plan.select(DESC, "cpu", prefer="reference", restrict=True).sku.backend == "reference"
    assert Plan.select(DESC, "cpu", prefer=["nvrtc"]).sku.backend == "reference"      # falls through
    with pytest.raises(NoPlanError) as info:
        Plan.select(DESC, "cpu", prefer=["nvrtc"], restrict=True)
    assert [v.backend for v in info.value.verdicts] == [b.name for b in registry.resolve("nvrtc")]
    assert "nvrtc" in str(info.value) and "reference" not in str(info.value)


@pytest.mark.parametrize("call", [
    lambda: Plan.select(DESC, "cpu", prefer=["no_such_backend"]),
    lambda: Plan.select(DESC, "cpu", prefer="no_such_backend", restrict=True),
    lambda: Plan.select(DESC, "cpu", prefer=["reference", "no_such_backend"]),
    lambda: explain(DESC, "cpu", prefer="no_such_backend"),
])
def test_unknown_backend_names_are_named(call):
    with pytest.raises(KeyError) as info:
        call()
    message = str(info.value)
    assert "no_such_backend" in message
    for name in registered():
        assert name in message                           # says what is registered


def test_bad_device_text_is_rejected():
    with pytest.raises(ValueError, match="device='gpu0'"):
        Plan.select(DESC, "gpu0")


# -- SKU pinning --------------------------------------------------------------------------------

def test_from_sku_round_trip():
    plan = Plan.select(DESC, "cpu")
    pinned = Plan.from_sku(DESC, plan.sku, "cpu")
    assert pinned.sku == plan.sku and pinned.backend.name == "reference"
    from_json = Plan.from_sku(DESC, KernelSku.from_json(plan.sku.to_json()), "cpu")
    assert from_json.sku == plan.sku
    args = qkv()
    np.testing.assert_array_equal(pinned.run(**args).out, plan.run(**args).out)


def test_from_sku_ignores_versions_and_notes():
    sku = Plan.select(DESC, "cpu").sku
    other = KernelSku.from_dict({**sku.to_dict(), "versions": {"attnplan": "0.0.1"}, "notes": "elsewhere"})
    assert Plan.from_sku(DESC, other, "cpu").sku.identity() == sku.identity()


@pytest.mark.parametrize("change, needle", [
    (dict(arch="sm_90"), "sm_90"),
    (dict(dtype="bf16"), "dtype bf16"),
    (dict(kernel="reference_numpy_backward"), "reference_numpy_backward"),
    (dict(config={"compute": "f64", "emulate_dtype": False, "tiles": 3}), "tiles"),
    (dict(config={}), "pinned SKU"),
    (dict(backend="no_such_backend"), "no_such_backend"),
    (dict(backend=NVRTC), "rejects this problem"),
    (dict(backend="nvrtc"), "is a family"),
])
def test_from_sku_mismatch_says_why(change, needle):
    sku = KernelSku.from_dict({**Plan.select(DESC, "cpu").sku.to_dict(), **change})
    with pytest.raises(SkuMismatch) as info:
        Plan.from_sku(DESC, sku, "cpu")
    assert needle in str(info.value), str(info.value)


def test_from_sku_with_another_descriptor_direction():
    forward_sku = Plan.select(DESC, "cpu").sku
    with pytest.raises(SkuMismatch, match="reference_numpy_forward"):
        Plan.from_sku(DESC.replace(direction="backward"), forward_sku, "cpu")


def test_from_sku_with_an_invalid_config_value_is_a_mismatch():
    sku = KernelSku.from_dict({**Plan.select(DESC, "cpu").sku.to_dict(),
                               "config": {"compute": "f16", "emulate_dtype": False}})
    with pytest.raises(SkuMismatch):
        Plan.from_sku(DESC, sku, "cpu")


def test_workspace_size():
    for desc in (DESC, DESC.replace(direction="backward")):
        plan = Plan.select(desc, "cpu")
        assert isinstance(plan.workspace_size, int) and plan.workspace_size >= 0
        assert plan.workspace_size == plan.sku.workspace_bytes


# -- argument checks ----------------------------------------------------------------------------

def _arguments_case(name):
    """(descriptor, good arguments) for the argument-check table."""
    rng = np.random.default_rng(1)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)    # noqa: E731
    if name == "dense":
        return DESC, qkv()
    if name == "thd":
        desc = AttentionDescriptor(batch=2, seqlen_q=4, seqlen_kv=5, heads_q=2, heads_kv=1, head_dim=8, dtype="f32",
                                   layout="thd", return_lse=True)
        return desc, dict(q=f32(7, 2, 8), k=f32(8, 1, 8), v=f32(8, 1, 8),
                          cu_seqlens_q=np.array([0, 4, 7], np.int32), cu_seqlens_kv=np.array([0, 3, 8], np.int32))
    if name == "paged":
        desc = AttentionDescriptor(batch=2, seqlen_q=3, seqlen_kv=8, heads_q=2, heads_kv=2, head_dim=8, dtype="f32",
                                   paged=PagedKV(4, 2))
        return desc, dict(q=f32(2, 3, 2, 8), k=f32(5, 4, 2, 8), v=f32(5, 4, 2, 8),
                          block_table=np.array([[3, 0], [1, 4]], np.int32), seqlens_kv=np.array([8, 3], np.int32))
    if name == "extras":
        desc = DESC.replace(alibi=True, sink_logits=True, dropout_p=0.2)
        return desc, dict(qkv(), alibi_slopes=np.full(4, 0.5, np.float32), sink_logits=np.zeros(4, np.float32),
                          dropout_seed=7)
    raise AssertionError(name)


def _bigger(a, axis):
    """`a` as a strided view (every other element of `axis`) of a twice-larger array."""
    shape = list(a.shape)
    shape[axis] *= 2
    big = np.zeros(shape, a.dtype)
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, 2)
    big[tuple(index)] = a
    return big[tuple(index)]


BAD_ARGUMENTS = [
    # (case, argument, change to the good arguments, words of the message)
    ("dense", "q", lambda a: dict(a, q=a["q"][:, :4]), "shape"),
    ("dense", "q", lambda a: dict(a, q=a["q"][..., :4]), "shape"),
    ("dense", "q", lambda a: dict(a, q=a["q"][0]), "shape"),
    ("dense", "k", lambda a: dict(a, k=a["k"][:, :, :1]), "shape"),
    ("dense", "v", lambda a: dict(a, v=a["v"][:, :6]), "shape"),
    ("dense", "q", lambda a: dict(a, q=a["q"].astype(np.float64)), "dtype f64, expected f32"),
    ("dense", "k", lambda a: dict(a, k=a["k"].astype(np.float16)), "dtype f16"),
    ("dense", "v", lambda a: dict(a, v=a["v"].astype(np.int32)), "dtype"),
    ("dense", "q", lambda a: dict(a, q=_bigger(a["q"], 3)), "innermost stride 2"),
    ("dense", "k", lambda a: dict(a, k=np.asfortranarray(a["k"])), "innermost stride"),
    ("dense", "v", lambda a: dict(a, v=a["v"][:, ::-1]), "negative stride"),
    ("dense", "out", lambda a: dict(a, out=np.zeros((2, 5, 4, 4), np.float32)), "shape"),
    ("dense", "out", lambda a: dict(a, out=np.zeros((2, 5, 4, 8), np.float64)), "dtype"),
    ("dense", "out", lambda a: dict(a, out=_bigger(np.zeros((2, 5, 4, 8), np.float32), 3)), "innermost stride"),
    ("dense", "lse", lambda a: dict(a, lse=np.zeros((2, 5, 4), np.float32)), "shape"),
    ("dense", "lse", lambda a: dict(a, lse=np.zeros((2, 4, 5), np.float64)), "dtype"),
    ("dense", "q", lambda a: dict(a, q=a["q"].tolist()), "list"),
    ("dense", "v", lambda a: dict(a, v=None), "required"),
    ("dense", "k", lambda a: {n: x for n, x in a.items() if n != "k"}, "required"),
    ("dense", "dout", lambda a: dict(a, dout=a["q"]), "not a forward argument"),
    ("dense", "bogus", lambda a: dict(a, bogus=1), "not a forward argument"),
    ("dense", "alibi_slopes", lambda a: dict(a, alibi_slopes=np.ones(4, np.float32)), "does not use it"),
    ("dense", "sink_logits", lambda a: dict(a, sink_logits=np.ones(4, np.float32)), "does not use it"),
    ("dense", "cu_seqlens_q", lambda a: dict(a, cu_seqlens_q=np.array([0, 5, 10], np.int32)), "does not use it"),
    ("dense", "block_table", lambda a: dict(a, block_table=np.zeros((2, 1), np.int32)), "does not use it"),
    ("dense", "dropout_seed", lambda a: dict(a, dropout_seed=3), "dropout_p is 0"),
    ("thd", "cu_seqlens_q", lambda a: dict(a, cu_seqlens_q=None), "required"),
    ("thd", "cu_seqlens_kv", lambda a: dict(a, cu_seqlens_kv=None), "required"),
    ("thd", "cu_seqlens_q", lambda a: dict(a, cu_seqlens_q=a["cu_seqlens_q"].astype(np.int64)), "dtype i64"),
    ("thd", "cu_seqlens_kv", lambda a: dict(a, cu_seqlens_kv=a["cu_seqlens_kv"].astype(np.float32)), "dtype"),
    ("thd", "cu_seqlens_q", lambda a: dict(a, cu_seqlens_q=np.array([0, 7], np.int32)), "shape [2], expected [3]"),
    ("thd", "cu_seqlens_kv", lambda a: dict(a, cu_seqlens_kv=np.array([0, 3, 5, 8], np.int32)), "shape"),
    ("thd", "cu_seqlens_q", lambda a: dict(a, cu_seqlens_q=np.array([[0, 4, 7]], np.int32)), "shape"),
    ("thd", "cu_seqlens_kv", lambda a: dict(a, cu_seqlens_kv=np.array([0, 6, 3], np.int32)), "never decrease"),
    ("thd", "cu_seqlens_q", lambda a: dict(a, cu_seqlens_q=np.array([1, 4, 7], np.int32)), "start at 0"),
    ("thd", "cu_seqlens_q", lambda a: dict(a, cu_seqlens_q=np.array([0, 4, 6], np.int32)), "ends at 6"),
    ("thd", "cu_seqlens_kv", lambda a: dict(a, cu_seqlens_kv=np.array([0, 2, 8], np.int32)), "length 6"),
    ("thd", "v", lambda a: dict(a, v=a["v"][:7]), "rows"),
    ("thd", "q", lambda a: dict(a, q=a["q"][:, :, None]), "shape"),
    ("thd", "lse", lambda a: dict(a, lse=np.zeros((2, 6), np.float32)), "expected [2, 7]"),
    ("thd", "out", lambda a: dict(a, out=np.zeros((6, 2, 8), np.float32)), "rows"),
    ("paged", "block_table", lambda a: dict(a, block_table=None), "required"),
    ("paged", "seqlens_kv", lambda a: dict(a, seqlens_kv=None), "required"),
    ("paged", "block_table", lambda a: dict(a, block_table=a["block_table"][:1]), "shape"),
    ("paged", "block_table", lambda a: dict(a, block_table=a["block_table"].astype(np.int64)), "dtype i64"),
    ("paged", "block_table", lambda a: dict(a, block_table=np.array([[3, 5], [1, 4]], np.int32)), "outside [0, 5)"),
    ("paged", "block_table", lambda a: dict(a, block_table=np.array([[3, 0], [-1, 4]], np.int32)), "row 1"),
    ("paged", "seqlens_kv", lambda a: dict(a, seqlens_kv=np.array([9, 3], np.int32)), "[0, 8]"),
    ("paged", "seqlens_kv", lambda a: dict(a, seqlens_kv=np.array([-1, 3], np.int32)), "[0, 8]"),
    ("paged", "seqlens_kv", lambda a: dict(a, seqlens_kv=np.array([8, 3, 1], np.int32)), "shape"),
    ("paged", "seqlens_kv", lambda a: dict(a, seqlens_kv=np.array([8, 3], np.uint32)), "dtype"),
    ("paged", "k", lambda a: dict(a, k=a["k"][:, :2]), "expected [*, 4, 2, 8]"),
    ("paged", "cu_seqlens_kv", lambda a: dict(a, cu_seqlens_kv=np.array([0, 8, 11], np.int32)), "does not use"),
    ("extras", "alibi_slopes", lambda a: dict(a, alibi_slopes=None), "alibi=True"),
    ("extras", "alibi_slopes", lambda a: dict(a, alibi_slopes=np.ones(3, np.float32)), "expected [4]"),
    ("extras", "alibi_slopes", lambda a: dict(a, alibi_slopes=np.ones((3, 4), np.float32)), "expected [2, 4]"),
    ("extras", "alibi_slopes", lambda a: dict(a, alibi_slopes=np.ones((1, 2, 4), np.float32)), "shape"),
    ("extras", "alibi_slopes", lambda a: dict(a, alibi_slopes=np.ones(4, np.float64)), "dtype f64"),
    ("extras", "sink_logits", lambda a: dict(a, sink_logits=None), "sink_logits=True"),
    ("extras", "sink_logits", lambda a: dict(a, sink_logits=np.ones(2, np.float32)), "shape"),
    ("extras", "sink_logits", lambda a: dict(a, sink_logits=np.ones(4, np.float16)), "dtype"),
    ("extras", "dropout_seed", lambda a: dict(a, dropout_seed=None), "required when dropout_p > 0"),
    ("extras", "dropout_seed", lambda a: dict(a, dropout_seed=-1), "[0, 2**64)"),
    ("extras", "dropout_seed", lambda a: dict(a, dropout_seed=2**64), "[0, 2**64)"),
    ("extras", "dropout_seed", lambda a: dict(a, dropout_seed=True), "[0, 2**64)"),
    ("extras", "dropout_seed", lambda a: dict(a, dropout_seed=1.0), "[0, 2**64)"),
]


@pytest.mark.parametrize("case, argument, change, words", BAD_ARGUMENTS,
                         ids=[f"{c}-{a}-{i}" for i, (c, a, _, _) in enumerate(BAD_ARGUMENTS)])
def test_can_implement_names_the_bad_argument(case, argument, change, words):
    desc, good = _arguments_case(case)
    plan = Plan.select(desc, "cpu")
    plan.can_implement(**good)                       # the unchanged arguments are fine
    with pytest.raises(InvalidArguments) as info:
        plan.can_implement(**change(good))
    error = info.value
    assert error.argument == argument, str(error)
    assert words in error.problem, str(error)
    assert str(error).startswith(f"argument {argument!r}: ")
    with pytest.raises(InvalidArguments):            # run checks the same way
        plan.run(**change(good))


def test_value_checks_can_be_skipped():
    desc, good = _arguments_case("thd")
    plan = Plan.select(desc, "cpu")
    decreasing = dict(good, cu_seqlens_kv=np.array([0, 6, 3], np.int32))
    with pytest.raises(InvalidArguments):
        plan.can_implement(**decreasing)
    plan.can_implement(check_values=False, **decreasing)
    with pytest.raises(InvalidArguments):            # shapes and dtypes are still checked
        plan.can_implement(check_values=False, **dict(good, cu_seqlens_kv=good["cu_seqlens_kv"].astype(np.int64)))


def test_largest_dropout_seed_is_accepted():
    desc, good = _arguments_case("extras")
    plan = Plan.select(desc, "cpu")
    for seed in (0, 2**64 - 1, np.uint64(2**63), np.int32(5)):
        assert plan.can_implement(**dict(good, dropout_seed=seed)).dropout_seed == int(seed)


def test_can_implement_binds_views_not_copies():
    plan = Plan.select(DESC, "cpu")
    args = qkv()
    bound = plan.can_implement(**args)
    for name in ("q", "k", "v"):
        assert np.shares_memory(getattr(bound, name).data, args[name])


def test_host_arrays_for_a_gpu_plan_are_rejected():
    pytest.importorskip("cupy")
    plan = Plan.select(DESC, SM90, prefer="reference", restrict=True)
    with pytest.raises(InvalidArguments) as info:
        plan.can_implement(**qkv())
    assert info.value.argument == "q" and "host" in str(info.value) and "sm_90" in str(info.value)


def test_non_contiguous_outer_strides_give_the_right_answer():
    rng = np.random.default_rng(3)
    big_q = rng.standard_normal((2, 10, 4, 8)).astype(np.float32)
    big_kv = rng.standard_normal((2, 7, 6, 8)).astype(np.float32)
    q = big_q[:, ::2]                                   # every other query row
    k = big_kv[:, :, 0:4:2]                             # kv heads 0 and 2
    v = big_kv[:, :, 1:5:2, :]                          # kv heads 1 and 3
    assert not (q.flags.c_contiguous or k.flags.c_contiguous or v.flags.c_contiguous)
    out, lse = Plan.select(DESC, "cpu").run(q=q, k=k, v=v)
    want_out, want_lse = brute_force.attention(q=q, k=k, v=v, causal=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-6)
    contiguous = Plan.select(DESC, "cpu").run(q=q.copy(), k=k.copy(), v=v.copy())
    np.testing.assert_array_equal(out, contiguous.out)


def test_bhsd_given_as_transposed_bshd_views():
    args = qkv()
    bhsd = DESC.replace(layout="bhsd")
    views = {n: a.transpose(0, 2, 1, 3) for n, a in args.items()}
    out, lse = Plan.select(bhsd, "cpu").run(**views)
    want = Plan.select(DESC, "cpu").run(**args)
    np.testing.assert_array_equal(out.transpose(0, 2, 1, 3), want.out)
    np.testing.assert_array_equal(lse, want.lse)


# -- running -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, np_dtype, lse_dtype", [("f32", np.float32, np.float32),
                                                       ("f64", np.float64, np.float64)])
@pytest.mark.parametrize("return_lse", [True, False])
def test_run_returns_attention_result(dtype, np_dtype, lse_dtype, return_lse):
    desc = DESC.replace(dtype=dtype, return_lse=return_lse, head_dim_v=5)
    args = qkv(desc, dtype=np_dtype)
    result = Plan.select(desc, "cpu").run(**args)
    assert isinstance(result, AttentionResult)
    out, lse = result
    assert result.out is out and isinstance(out, np.ndarray)
    assert out.shape == (2, 5, 4, 5) and out.dtype == np_dtype
    if return_lse:
        assert lse.shape == (2, 4, 5) and lse.dtype == lse_dtype
        want_out, want_lse = brute_force.attention(**args, causal=True)
        np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-6)
    else:
        assert lse is None
        want_out, _ = brute_force.attention(**args, causal=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)


def test_run_varlen_shapes():
    desc, args = _arguments_case("thd")
    out, lse = Plan.select(desc, "cpu").run(**args)
    assert out.shape == (7, 2, 8) and lse.shape == (2, 7) and lse.dtype == np.float32
    want_out, want_lse = brute_force.attention(**args, layout="thd")
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-6)


def test_run_writes_given_out_and_lse_in_place():
    plan = Plan.select(DESC, "cpu")
    args = qkv()
    out = np.full((2, 5, 4, 8), np.nan, np.float32)
    lse = np.full((2, 4, 5), np.nan, np.float32)
    result = plan.run(**args, out=out, lse=lse)
    assert result.out is out and result.lse is lse
    want = plan.run(**args)
    np.testing.assert_array_equal(out, want.out)
    np.testing.assert_array_equal(lse, want.lse)


def test_backward_plan_returns_gradients():
    desc = DESC.replace(direction="backward", head_dim_v=6)
    forward = Plan.select(desc.replace(direction="forward"), "cpu")
    args = qkv(desc)
    out, lse = forward.run(**args)
    dout = np.random.default_rng(9).standard_normal(out.shape).astype(np.float32)
    plan = Plan.select(desc, "cpu")
    assert plan.sku.kernel == "reference_numpy_backward"
    grads = plan.run(**args, out=out, lse=lse, dout=dout)
    assert len(grads) == 3
    for grad, name in zip(grads, ("q", "k", "v")):
        assert isinstance(grad, np.ndarray) and grad.shape == args[name].shape and grad.dtype == np.float32
    want = attnplan.attention_backward(dout, **args, out=out, lse=lse, causal=True)
    for got, expected in zip(grads, want):
        np.testing.assert_array_equal(got, expected)
    assert np.abs(grads[2]).sum() > 0


def test_backward_plan_with_sink_logits_returns_their_gradient():
    desc = DESC.replace(direction="backward", sink_logits=True)
    args = qkv(desc)
    sinks = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    out, lse = Plan.select(desc.replace(direction="forward"), "cpu").run(**args, sink_logits=sinks)
    grads = Plan.select(desc, "cpu").run(**args, out=out, lse=lse, dout=np.ones_like(out), sink_logits=sinks)
    assert len(grads) == 4 and grads[3].shape == (4,) and grads[3].dtype == np.float32


@pytest.mark.parametrize("missing", ["out", "lse", "dout"])
def test_backward_plan_requires_out_lse_dout(missing):
    desc = DESC.replace(direction="backward")
    args = qkv(desc)
    out, lse = Plan.select(desc.replace(direction="forward"), "cpu").run(**args)
    full = dict(args, out=out, lse=lse, dout=np.ones_like(out))
    with pytest.raises(InvalidArguments) as info:
        Plan.select(desc, "cpu").run(**{n: a for n, a in full.items() if n != missing})
    assert info.value.argument == missing and "direction='backward'" in str(info.value)


def _backward_call(sink_logits=False):
    desc = DESC.replace(direction="backward", sink_logits=sink_logits)
    args = qkv(desc)
    if sink_logits:
        args["sink_logits"] = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    out, lse = Plan.select(desc.replace(direction="forward"), "cpu").run(**args)
    dout = np.random.default_rng(10).standard_normal(out.shape).astype(np.float32)
    return Plan.select(desc, "cpu"), dict(args, out=out, lse=lse, dout=dout)


@pytest.mark.parametrize("sink_logits", [False, True])
def test_backward_writes_given_gradients_in_place(sink_logits):
    """dq= / dk= / dv= / dsink_logits= are the backward's out= (the launch-only run of a backward)."""
    plan, args = _backward_call(sink_logits)
    want = plan.run(**args)
    given = {"dq": np.full_like(args["q"], np.nan), "dk": np.full_like(args["k"], np.nan),
             "dv": np.full_like(args["v"], np.nan)}
    if sink_logits:
        given["dsink_logits"] = np.full(4, np.nan, np.float32)
    grads = plan.run(**args, **given)
    assert len(grads) == len(want) == len(given)
    for got, name, expected in zip(grads, given, want):
        assert got is given[name], name
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name, change, words", [
    ("dq", lambda a: np.zeros(a["q"].shape[:-1] + (9,), np.float32), "shape"),
    ("dk", lambda a: np.zeros(a["k"].shape, np.float16), "dtype"),
    ("dv", lambda a: np.zeros(a["v"].shape, np.float32)[..., ::-1], "stride"),
    ("dq", lambda a: _read_only(np.zeros(a["q"].shape, np.float32)), "read-only"),
    ("dsink_logits", lambda a: np.zeros(4, np.float32), "does not use it"),
])
def test_bad_gradient_outputs_are_named(name, change, words):
    plan, args = _backward_call()
    with pytest.raises(InvalidArguments, match=words) as info:
        plan.run(**args, **{name: change(args)})
    assert info.value.argument == name


def _read_only(array):
    array.flags.writeable = False
    return array


def test_gradient_outputs_are_not_forward_arguments():
    plan = Plan.select(DESC, "cpu")
    with pytest.raises(InvalidArguments, match="not a forward argument") as info:
        plan.run(**qkv(), dq=np.zeros((2, 5, 4, 8), np.float32))
    assert info.value.argument == "dq"
