"""The custom ops behind attnplan.torch on CPU tensors: the same answers as attnplan.attention for
every layout (varlen, paged, LSE), gradients (gradcheck, sink logits, dropout regenerated from the
seed), opcheck, fakes and meta tensors, torch.compile (fullgraph), torch.export, vmap, dropout seeds
from PyTorch's generators, and the plan cache."""

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attnplan  # noqa: E402
import attnplan.api  # noqa: E402
import attnplan.torch as apt  # noqa: E402
from attnplan import AttentionDescriptor, InvalidArguments, InvalidDescriptor, NoPlanError, Plan  # noqa: E402
from attnplan.torch import ops  # noqa: E402

F64 = torch.float64
# torch.compile's own imports warn about TorchScript's deprecation: not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def tensors(*shapes, dtype=F64, seed=0, grad=True):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, dtype=dtype, generator=generator).requires_grad_(grad) for shape in shapes]


def varlen_problem(lengths_q=(3, 0, 5), lengths_kv=(4, 2, 6), heads=(4, 2), dim=8):
    cu_q = torch.tensor(np.concatenate([[0], np.cumsum(lengths_q)]), dtype=torch.int32)
    cu_kv = torch.tensor(np.concatenate([[0], np.cumsum(lengths_kv)]), dtype=torch.int32)
    kv_shape = (sum(lengths_kv), heads[1], dim)
    q, k, v = tensors((sum(lengths_q), heads[0], dim), kv_shape, kv_shape)
    return q, k, v, dict(layout="thd", cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv, max_seqlen_q=max(lengths_q),
                         max_seqlen_kv=max(lengths_kv))


def paged_problem(page_size=4, heads=(4, 2), dim=8):
    q, = tensors((2, 3, heads[0], dim), grad=False)
    k, v = tensors((6, page_size, heads[1], dim), (6, page_size, heads[1], dim), seed=1, grad=False)
    block_table = torch.tensor([[5, 0, 2], [1, 3, 4]], dtype=torch.int32)
    seqlens_kv = torch.tensor([9, 5], dtype=torch.int32)
    return q, k, v, dict(block_table=block_table, seqlens_kv=seqlens_kv, max_seqlen_kv=12)


def numpy_attention(q, k, v, **options):
    """attnplan.attention on the NumPy views: what the op must reproduce exactly."""
    host = {name: value.detach().numpy() if isinstance(value, torch.Tensor) else value
            for name, value in options.items()}
    return attnplan.attention(*(x.detach().numpy() for x in (q, k, v)), **host)


# -- the same answers as attnplan.attention ------------------------------------------------------

CASES = {
    "bshd_causal_gqa": lambda: (*tensors((2, 5, 4, 8), (2, 7, 2, 8), (2, 7, 2, 6)), dict(causal=True)),
    "bhsd_window_sinks": lambda: (*tensors((2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8)),
                                  dict(layout="bhsd", window=(2, 1), sink_tokens=1)),
    "softcap_alibi_scale": lambda: (*tensors((1, 6, 2, 8), (1, 6, 2, 8), (1, 6, 2, 8)),
                                    dict(softcap=3.0, alibi_slopes=torch.tensor([0.5, 0.25]), scale=0.2)),
    "bias": lambda: (*tensors((2, 5, 2, 8), (2, 7, 2, 8), (2, 7, 2, 8)),
                     dict(bias=torch.randn(1, 2, 5, 7, dtype=F64))),
    "sink_logits": lambda: (*tensors((1, 5, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8)),
                            dict(sink_logits=torch.tensor([0.3, -0.7]), causal=True)),
    "dropout": lambda: (*tensors((1, 6, 2, 8), (1, 6, 2, 8), (1, 6, 2, 8)),
                        dict(dropout_p=0.3, dropout_seed=2**63 + 5)),
    "varlen": lambda: varlen_problem(),
    "varlen_bottom_right": lambda: (*varlen_problem()[:3], dict(varlen_problem()[3], causal=True)),
    "paged": lambda: paged_problem(),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_lse_match_attnplan_attention(case):
    q, k, v, options = CASES[case]()
    out, lse = apt.attention(q, k, v, return_lse=True, **options)
    want_out, want_lse = numpy_attention(q, k, v, return_lse=True, **options)
    assert isinstance(out, torch.Tensor) and out.dtype == q.dtype and out.shape == want_out.shape
    np.testing.assert_array_equal(out.detach().numpy(), want_out)
    np.testing.assert_array_equal(lse.numpy(), want_lse)
    assert not lse.requires_grad                               # as PyTorch's fused attention: no LSE gradient


@pytest.mark.parametrize("case", sorted(set(CASES) - {"paged"}))
def test_backward_matches_attnplan_attention_backward(case):
    q, k, v, options = CASES[case]()
    inputs = [q, k, v] + ([options["sink_logits"].requires_grad_()] if "sink_logits" in options else [])
    out = apt.attention(q, k, v, **options)
    dout = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out, inputs, dout)
    _, lse = numpy_attention(q, k, v, return_lse=True, **options)
    host = {name: value.detach().numpy() if isinstance(value, torch.Tensor) else value
            for name, value in options.items()}
    want = attnplan.attention_backward(dout.numpy(), *(x.detach().numpy() for x in (q, k, v)),
                                       out.detach().numpy(), lse, **host)
    for got, expected in zip(grads, want):
        np.testing.assert_array_equal(got.numpy(), expected)
    functional = apt.attention_backward(dout, q.detach(), k.detach(), v.detach(), out.detach(),
                                        torch.from_numpy(lse), **{n: x.detach() if isinstance(x, torch.Tensor) else x
                                                                  for n, x in options.items()})
    for got, expected in zip(functional, want):
        np.testing.assert_array_equal(got.numpy(), expected)


# -- gradients, numerically ------------------------------------------------------------------------

GRADCHECK = {
    "plain": dict(),
    "causal_gqa": dict(causal=True, shapes=((1, 4, 4, 3), (1, 5, 2, 3), (1, 5, 2, 3))),
    "softcap_alibi_window": dict(softcap=2.0, alibi_slopes=torch.tensor([0.5, 0.25]), window=(1, 1)),
    "bias_bhsd": dict(layout="bhsd", bias=torch.randn(1, 2, 4, 4, dtype=F64),
                      shapes=((1, 2, 4, 3), (1, 2, 4, 3), (1, 2, 4, 3))),
    "dropout": dict(dropout_p=0.4, dropout_seed=11),
}


@pytest.mark.parametrize("case", sorted(GRADCHECK))
def test_gradcheck(case):
    options = dict(GRADCHECK[case])
    shapes = options.pop("shapes", ((1, 4, 2, 3), (1, 4, 2, 3), (1, 4, 2, 3)))
    q, k, v = tensors(*shapes)
    assert torch.autograd.gradcheck(lambda q, k, v: apt.attention(q, k, v, **options), (q, k, v))


def test_gradcheck_varlen():
    q, k, v, options = varlen_problem(lengths_q=(2, 3), lengths_kv=(3, 2), heads=(2, 1), dim=3)
    assert torch.autograd.gradcheck(lambda q, k, v: apt.attention(q, k, v, causal=True, **options), (q, k, v))


def test_sink_logit_gradient_against_autograd_of_the_formula():
    """dsigma from our backward plans against autograd through the softmax with a sink column."""
    q, k, v = tensors((2, 5, 3, 4), (2, 6, 3, 4), (2, 6, 3, 4))
    sinks = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    out = apt.attention(q, k, v, sink_logits=sinks)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    column = sinks.double()[None, :, None, None].expand(2, 3, 5, 1)
    weights = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
    want = torch.einsum("bhqk,bkhd->bqhd", weights, v)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    dout = torch.randn(out.shape, dtype=F64)
    for got, expected in zip(torch.autograd.grad(out, (q, k, v, sinks), dout),
                             torch.autograd.grad(want, (q, k, v, sinks), dout)):
        torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-6, atol=1e-6)


def test_dropout_backward_regenerates_the_forward_mask():
    """The gradient of a dropout forward is that of the same mask: dv = (P * keep / (1 - p))^T dout."""
    q, k, v = tensors((1, 6, 1, 4), (1, 6, 1, 4), (1, 6, 1, 4))
    out = apt.attention(q, k, v, dropout_p=0.5, dropout_seed=7)
    ones = torch.ones(1, 6, 1, 4, dtype=F64)
    weights = apt.attention(q.detach(), k.detach(), torch.eye(6, dtype=F64)[None, :, None, :], dropout_p=0.5,
                            dropout_seed=7)[0, :, 0]           # row i: the kept, rescaled weights of row i
    assert (weights == 0).any()
    dv, = torch.autograd.grad(out, v, ones)
    torch.testing.assert_close(dv[0, :, 0], weights.t() @ ones[0, :, 0], rtol=1e-12, atol=1e-12)


def test_lse_is_recomputed_when_the_op_was_called_without_it():
    q, k, v = tensors((1, 4, 2, 3), (1, 4, 2, 3), (1, 4, 2, 3))
    out, lse, _ = ops.attention_op(q, k, v, causal=True)              # torch.ops directly: no LSE kept
    assert lse.shape == (0,)
    got = torch.autograd.grad(out.sum(), (q, k, v))
    want = torch.autograd.grad(apt.attention(q, k, v, causal=True).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- opcheck, fakes, meta --------------------------------------------------------------------------

def _op_arguments(q, k, v, options):
    arguments = dict(options)
    left, right = arguments.pop("window", (-1, -1))
    if "dropout_seed" in arguments:
        arguments["dropout_seed"] = apt.dropout_seed_tensor(arguments["dropout_p"], arguments["dropout_seed"])
    return (q, k, v), dict(arguments, window_left=left, window_right=right)


@pytest.mark.parametrize("case", ["bshd_causal_gqa", "bhsd_window_sinks", "sink_logits", "dropout", "varlen",
                                  "paged", "bias"])
def test_opcheck_forward(case):
    q, k, v, options = CASES[case]()
    args, kwargs = _op_arguments(q, k, v, options)
    torch.library.opcheck(ops.attention_op, args, dict(kwargs, return_lse=True))


def test_opcheck_backward():
    q, k, v, options = CASES["bshd_causal_gqa"]()
    out, lse = apt.attention(q, k, v, return_lse=True, **options)
    args, kwargs = _op_arguments(q.detach(), k.detach(), v.detach(), options)
    torch.library.opcheck(ops.attention_backward_op, (torch.randn_like(out),) + args + (out.detach(), lse), kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fake_and_meta_outputs_match_the_real_ones(case):
    from torch._subclasses.fake_tensor import FakeTensorMode
    q, k, v, options = CASES[case]()
    args, kwargs = _op_arguments(q.detach(), k.detach(), v.detach(), options)
    real = ops.attention_op(*args, **kwargs, return_lse=True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = ops.attention_op(*(mode.from_tensor(x) for x in args), **kwargs, return_lse=True)
    meta = ops.attention_op(*(x.to("meta") for x in args),
                            **{n: x.to("meta") if isinstance(x, torch.Tensor) else x for n, x in kwargs.items()},
                            return_lse=True)
    for r, f, m in zip(real, fake, meta):
        assert r.shape == f.shape == m.shape and r.dtype == f.dtype == m.dtype and r.stride() == f.stride()
        assert m.device.type == "meta"


def test_fp8_forward_with_amax_and_out_dtype():
    q, k, v = (x.detach().to(torch.float8_e4m3fn) for x in tensors((1, 4, 2, 16), (1, 4, 2, 16), (1, 4, 2, 16)))
    amax = torch.zeros(1, dtype=torch.float32)
    scale_o = torch.tensor([2.0])
    out = apt.attention(q, k, v, out_dtype=torch.float8_e4m3fn, scale_o=scale_o, amax_o=amax)
    want_amax = torch.zeros(1, dtype=torch.float32)
    want = attnplan.attention(q, k, v, out_dtype="e4m3", scale_o=scale_o, amax_o=want_amax)    # the array API
    assert out.dtype == torch.float8_e4m3fn
    np.testing.assert_array_equal(out.view(torch.uint8).numpy(), want.view(torch.uint8).numpy())
    assert amax.item() == want_amax.item() > 0
    assert apt.attention(q, k, v).dtype == torch.bfloat16


# -- compiler support -------------------------------------------------------------------------------

class Attend(torch.nn.Module):
    def __init__(self, dim=16, heads=4, heads_kv=2, **options):
        super().__init__()
        self.heads, self.heads_kv, self.options = heads, heads_kv, options
        self.q = torch.nn.Linear(dim, dim, dtype=F64)
        self.kv = torch.nn.Linear(dim, 2 * dim * heads_kv // heads, dtype=F64)
        self.sinks = torch.nn.Parameter(torch.zeros(heads))

    def forward(self, x):
        batch, seqlen, dim = x.shape
        q = self.q(x).view(batch, seqlen, self.heads, -1)
        k, v = self.kv(x).view(batch, seqlen, 2, self.heads_kv, -1).unbind(2)
        return apt.attention(q, k, v, causal=True, sink_logits=self.sinks, **self.options).sum(-1)


def _eager_and_compiled(backend, **options):
    torch.manual_seed(0)
    model = Attend(**options)
    x = torch.randn(2, 6, 16, dtype=F64)
    results = []
    for fn in (model, torch.compile(model, fullgraph=True, backend=backend)):
        torch.manual_seed(1)
        model.zero_grad()
        out = fn(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    return results


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    (out, grads), (compiled_out, compiled_grads) = _eager_and_compiled(backend, dropout_p=0.2, window=(3, 0))
    torch.testing.assert_close(compiled_out, out, rtol=0, atol=0)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_compile_inductor():
    torch._dynamo.reset()
    (out, grads), (compiled_out, compiled_grads) = _eager_and_compiled("inductor")
    torch.testing.assert_close(compiled_out, out, rtol=1e-12, atol=1e-12)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_torch_export_keeps_the_op():
    class Model(torch.nn.Module):
        def forward(self, q, k, v):
            return apt.scaled_dot_product_attention(q, k, v, is_causal=True, softcap=4.0)
    q, k, v = tensors((2, 2, 5, 8), (2, 2, 6, 8), (2, 2, 6, 8), grad=False)
    exported = torch.export.export(Model(), (q, k, v))
    assert "torch.ops.attnplan.attention.default" in exported.graph_module.code
    torch.testing.assert_close(exported.module()(q, k, v), Model()(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("in_dims", [(0, 0, 0), (1, None, None)], ids=["folded", "q_only"])
def test_vmap(in_dims):
    q, k, v = tensors((3, 2, 5, 2, 4), (2, 3, 2, 4), (2, 3, 2, 4), grad=False)
    if in_dims[1] is not None:
        k, v = (x.expand(3, *x.shape).contiguous() for x in (k, v))
    else:
        q = q.movedim(0, 1)
    mapped = torch.vmap(lambda a, b, c: apt.attention(a, b, c, causal=True), in_dims=in_dims)(q, k, v)
    q_slices = q.unbind(in_dims[0])
    kv = [(k[i], v[i]) if in_dims[1] is not None else (k, v) for i in range(3)]
    want = torch.stack([apt.attention(q_slices[i], *kv[i], causal=True) for i in range(3)])
    torch.testing.assert_close(mapped, want, rtol=0, atol=0)


def test_vmap_of_varlen_runs_one_slice_at_a_time():
    q, k, v, options = varlen_problem()
    stacked = [x.detach().expand(2, *x.shape).contiguous() for x in (q, k, v)]
    mapped = torch.vmap(lambda a, b, c: apt.attention(a, b, c, return_lse=True, **options))(*stacked)
    want = apt.attention(q.detach(), k.detach(), v.detach(), return_lse=True, **options)
    for got, expected in zip(mapped, want):
        torch.testing.assert_close(got, expected.expand(2, *expected.shape), rtol=0, atol=0)


# -- dropout seeds ------------------------------------------------------------------------------------

def test_dropout_seeds_come_from_torch_generators():
    q, k, v = tensors((1, 8, 2, 4), (1, 8, 2, 4), (1, 8, 2, 4), grad=False)
    run = lambda **kw: apt.attention(q, k, v, dropout_p=0.5, **kw)  # noqa: E731
    torch.manual_seed(3)
    first = run()
    torch.manual_seed(3)
    torch.testing.assert_close(run(), first, rtol=0, atol=0)       # torch.manual_seed makes runs reproducible
    assert not torch.equal(run(), first)                           # and the next draw is another mask
    mine = torch.Generator().manual_seed(9)
    with_generator = run(generator=mine)
    torch.testing.assert_close(run(generator=torch.Generator().manual_seed(9)), with_generator, rtol=0, atol=0)
    seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64,
                             generator=torch.Generator().manual_seed(9))) & (2**64 - 1)
    torch.testing.assert_close(run(dropout_seed=seed), with_generator, rtol=0, atol=0)   # the seed it drew


def test_explicit_seeds_cover_64_bits_and_are_checked():
    q, k, v = tensors((1, 8, 2, 4), (1, 8, 2, 4), (1, 8, 2, 4), grad=False)
    for seed in (0, 2**63 - 1, 2**63, 2**64 - 1):
        got = apt.attention(q, k, v, dropout_p=0.5, dropout_seed=seed)
        np.testing.assert_array_equal(got.numpy(), numpy_attention(q, k, v, dropout_p=0.5, dropout_seed=seed))
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(InvalidArguments, match="dropout_seed"):
            apt.attention(q, k, v, dropout_p=0.5, dropout_seed=bad)


# -- the front door -------------------------------------------------------------------------------------

def test_takes_every_keyword_of_attnplan_attention():
    ours = set(inspect.signature(apt.attention).parameters)
    theirs = set(attnplan.api._RUN_ARGUMENTS) | set(attnplan.api._DESCRIBE_ONLY) | {"backend", "policy", "out"}
    assert theirs <= ours, theirs - ours
    ours_backward = set(inspect.signature(apt.attention_backward).parameters)
    assert theirs - {"out", "descale_q", "descale_k", "descale_v", "scale_o", "amax_o"} <= ours_backward


def test_out_is_filled_and_returned():
    q, k, v = tensors((1, 4, 2, 8), (1, 4, 2, 8), (1, 4, 2, 8), grad=False)
    out = torch.full((1, 4, 2, 8), float("nan"), dtype=F64)
    assert apt.attention(q, k, v, out=out) is out
    torch.testing.assert_close(out, apt.attention(q, k, v), rtol=0, atol=0)


def test_plans_are_chosen_once_per_descriptor(monkeypatch):
    attnplan.api._selected_plan.cache_clear()
    calls = []
    select = Plan.select
    monkeypatch.setattr(Plan, "select", classmethod(lambda cls, *a, **kw: calls.append(a[0]) or select(*a, **kw)))
    q, k, v = tensors((1, 4, 2, 8), (1, 4, 2, 8), (1, 4, 2, 8))
    for _ in range(3):
        apt.attention(q, k, v, causal=True).sum().backward()
    assert [d.direction for d in calls] == ["forward", "backward"]
    assert calls[0].return_lse and calls[0].causal


def test_pinned_skus():
    """A SKU pins the forward (its backward runs on the SKU's backend); a pair pins both passes."""
    q, k, v = tensors((1, 4, 2, 8), (1, 4, 2, 8), (1, 4, 2, 8))
    desc = attnplan.describe(q, k, v, return_lse=True)
    forward = Plan.select(desc, "cpu", prefer="reference").sku
    backward = Plan.select(desc.replace(direction="backward", return_lse=False), "cpu").sku
    out = apt.attention(q, k, v, sku=forward)
    torch.testing.assert_close(out, apt.attention(q, k, v, sku=forward.to_json()), rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    pinned = torch.autograd.grad(apt.attention(q, k, v, sku=(forward, backward)).sum(), (q, k, v))
    for a, b in zip(grads, pinned):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(attnplan.SkuMismatch):
        apt.attention(q, k, v, sku=backward)                   # a backward kernel cannot serve the forward


def test_errors_are_ours():
    q, k, v = tensors((1, 4, 2, 8), (1, 4, 2, 8), (1, 4, 2, 8))
    with pytest.raises(InvalidDescriptor, match="window"):
        apt.attention(q, k, v, causal=True, window=(2, 3))
    with pytest.raises(InvalidArguments, match="sink_logits"):
        apt.attention(q, k, v, sink_logits=torch.zeros(2, dtype=F64))          # float32, per semantics
    with pytest.raises(NoPlanError):
        apt.attention(q, k, v, backend="cudnn")
    with pytest.raises(TypeError):
        apt.attention(q, k, v, not_an_option=1)


def test_descriptor_takes_torch_dtypes():
    desc = AttentionDescriptor(batch=1, seqlen_q=2, seqlen_kv=2, heads_q=1, heads_kv=1, head_dim=8,
                               dtype=torch.float8_e5m2, out_dtype=torch.float8_e5m2)
    assert (desc.dtype, desc.out_dtype) == ("e5m2", "e5m2")
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "f16"), (torch.float32, "f32"), (F64, "f64")):
        assert AttentionDescriptor(batch=1, seqlen_q=2, seqlen_kv=2, heads_q=1, heads_kv=1, head_dim=8,
                                   dtype=dtype).dtype == name
    with pytest.raises(InvalidDescriptor) as error:
        AttentionDescriptor(batch=1, seqlen_q=2, seqlen_kv=2, heads_q=1, heads_kv=1, head_dim=8, dtype=torch.int8)
    assert error.value.field == "dtype"
