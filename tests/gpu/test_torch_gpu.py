"""attnplan.torch on CUDA tensors: the drop-in against PyTorch's SDPA by the 2x rule (forward and
gradients), the ops' registrations (opcheck), torch.compile, the current-stream contract (our work is
ordered on PyTorch's current stream, with no host synchronisation) and capture in a CUDA graph."""

import math
import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("PyTorch without CUDA", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import attnplan.torch as apt  # noqa: E402
from attnplan.torch import ops  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]

# Half an ulp at 1.0 of the dtype: the floor of every comparison (as tests/gpu/support.py).
EPSILON = {torch.bfloat16: 2.0**-9, torch.float16: 2.0**-12, torch.float32: 1e-6}


def inputs(shape_q, shape_kv, dtype, seed=0, grad=True):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(shape, device="cuda", dtype=dtype, generator=generator).requires_grad_(grad)
            for shape in (shape_q, shape_kv, shape_kv)]


def exact(query, key, value, **kwargs):
    """PyTorch's math SDPA in float64 on the same values: the reference."""
    with sdpa_kernel(SDPBackend.MATH):
        q, k, v = (x.detach().double().requires_grad_() for x in (query, key, value))
        mask = kwargs.pop("attn_mask", None)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else
                                             (mask if mask.dtype == torch.bool else mask.double()), **kwargs)
    return out, (q, k, v)


def error(x, ref) -> float:
    return (x.double() - ref).abs().max().item()


def check_by_the_2x_rule(query, key, value, ours_options=None, **kwargs):
    """Ours (with `ours_options` besides, such as a backend) and PyTorch's SDPA in the inputs' dtype,
    each against the float64 math: ours may be off by at most twice PyTorch's error plus half an ulp,
    for out and for each gradient."""
    ours = apt.scaled_dot_product_attention(query, key, value, **kwargs, **(ours_options or {}))
    theirs = F.scaled_dot_product_attention(query, key, value, **kwargs)
    want, leaves = exact(query, key, value, **kwargs)
    eps = EPSILON[query.dtype]
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype and ours.is_cuda
    assert error(ours, want) <= 2 * error(theirs, want) + eps, (error(ours, want), error(theirs, want))
    dout = torch.randn_like(ours)
    grads_ours = torch.autograd.grad(ours, (query, key, value), dout)
    grads_theirs = torch.autograd.grad(theirs, (query, key, value), dout)
    grads_want = torch.autograd.grad(want, leaves, dout.double())
    for name, a, b, w in zip("qkv", grads_ours, grads_theirs, grads_want):
        scale = max(1.0, w.abs().max().item())
        assert error(a, w) <= 2 * error(b, w) + eps * scale, (name, error(a, w), error(b, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("features", [
    dict(),
    dict(is_causal=True),
    dict(is_causal=True, kv=200),                # top-left with seqlen_q != seqlen_kv
    dict(enable_gqa=True, heads_kv=2, is_causal=True),
    dict(scale=0.05),
    dict(mask="bool"),
    dict(mask="float"),
], ids=lambda f: "-".join(f"{k}" for k in f) or "plain")
def test_sdpa_drop_in_by_the_2x_rule(dtype, features):
    features = dict(features)
    seqlen_kv, heads_kv, mask = features.pop("kv", 128), features.pop("heads_kv", 8), features.pop("mask", None)
    q, k, v = inputs((2, 8, 128, 64), (2, heads_kv, seqlen_kv, 64), dtype)
    if mask == "bool":
        features["attn_mask"] = torch.rand(128, seqlen_kv, device="cuda") > 0.2
    elif mask == "float":
        features["attn_mask"] = torch.randn(2, 1, 128, seqlen_kv, device="cuda", dtype=dtype)
    check_by_the_2x_rule(q, k, v, **features)


GPU_BACKENDS = ("nvrtc.sm80", "nvrtc.sm90a", "cudnn")


def _forward_sku(backend, q, k, v, causal, layout="bhsd"):
    """The SKU `backend` builds for the forward of a call on these tensors ([b, h, s, d]: what
    scaled_dot_product_attention describes; or `layout`), to pin it; a skip with its reasons where it
    declines."""
    from attnplan import Plan, explain
    from attnplan.api import describe
    from attnplan.device import default_device
    desc = describe(q, k, v, layout=layout, causal=causal, causal_alignment="top_left")
    verdict = explain(desc, default_device(), prefer=backend, restrict=True).of(backend)
    if not verdict.accepted:
        pytest.skip(f"{backend} declines: {verdict.reasons}")
    return Plan.select(desc, default_device(), prefer=backend, restrict=True).sku


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_each_gpu_backend_against_sdpa_math_in_float64(backend, dtype, causal):
    """Forward and gradients with the forward pinned to `backend`'s kernel (the backward on that
    backend where it has one, else the planner's choice), against PyTorch's math SDPA in float64 by the 2x rule."""
    q, k, v = inputs((2, 8, 256, 128), (2, 2, 256, 128), dtype, seed=3)
    sku = _forward_sku(backend, q, k, v, causal)
    assert sku.backend == backend
    check_by_the_2x_rule(q, k, v, ours_options=dict(sku=sku), is_causal=causal, enable_gqa=True)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_on_each_gpu_backend_against_sdpa_math_in_float64(backend, causal):
    """attnplan.torch.attention on [b, s, h, d] tensors (the layout every GPU backend takes; sm90a has no
    bhsd maps, so the SDPA drop-in above never reaches it), the forward pinned to `backend`'s kernel:
    out and the gradients by the 2x rule against PyTorch's math SDPA in float64, with PyTorch's SDPA in
    bf16 as the baseline."""
    q, k, v = inputs((2, 256, 8, 128), (2, 256, 2, 128), torch.bfloat16, seed=4)
    sku = _forward_sku(backend, q, k, v, causal, layout="bshd")
    assert sku.backend == backend
    ours = apt.attention(q, k, v, causal=causal, causal_alignment="top_left", sku=sku)
    heads_first = [x.transpose(1, 2) for x in (q, k, v)]
    theirs = F.scaled_dot_product_attention(*heads_first, is_causal=causal, enable_gqa=True).transpose(1, 2)
    want, leaves = exact(*heads_first, is_causal=causal, enable_gqa=True)
    want = want.transpose(1, 2)
    eps = EPSILON[q.dtype]
    assert error(ours, want) <= 2 * error(theirs, want) + eps, (error(ours, want), error(theirs, want))
    dout = torch.randn_like(ours)
    grads_ours = torch.autograd.grad(ours, (q, k, v), dout)
    grads_theirs = torch.autograd.grad(theirs, (q, k, v), dout)
    grads_want = [g.transpose(1, 2) for g in torch.autograd.grad(want, leaves, dout.double())]
    for name, a, b, w in zip("qkv", grads_ours, grads_theirs, grads_want):
        scale = max(1.0, w.abs().max().item())
        assert error(a, w) <= 2 * error(b, w) + eps * scale, (name, error(a, w), error(b, w))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_transformer_block_trains_like_with_pytorchs_sdpa(backend):
    """The tiny block of tests/torch_block.py in bf16 on the GPU, 40 AdamW steps: our loss curve
    follows PyTorch's fused SDPA's within bf16 noise, and both learn."""
    from torch_block import train
    shape = dict(batch=4, seqlen=256, dim=256, heads=4, heads_kv=2)
    q, k, v = inputs((4, 4, 256, 64), (4, 2, 256, 64), torch.bfloat16, grad=False)
    sku = _forward_sku(backend, q, k, v, causal=True)

    def ours(*args, **kwargs):
        return apt.scaled_dot_product_attention(*args, sku=sku, **kwargs)
    common = dict(steps=40, dtype=torch.bfloat16, device="cuda", lr=3e-3, **shape)
    mine, theirs = train(ours, **common), train(F.scaled_dot_product_attention, **common)
    assert all(map(math.isfinite, mine)), mine
    assert mine[-1] < 0.8 * mine[0] and theirs[-1] < 0.8 * theirs[0], (mine, theirs)
    worst = max(abs(a - b) / b for a, b in zip(mine, theirs))
    assert worst < 0.03, (worst, mine, theirs)


def test_sink_logit_gradient_on_cuda():
    q, k, v = inputs((2, 64, 4, 64), (2, 64, 4, 64), torch.bfloat16)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], device="cuda", requires_grad=True)
    out = apt.attention(q, k, v, causal=True, sink_logits=sinks)
    out.float().sum().backward()
    reference = apt.attention(*(x.detach().double().cpu() for x in (q, k, v)), causal=True,
                              sink_logits=sinks.detach().cpu().requires_grad_())
    assert error(out.cpu(), reference.detach()) <= 2 * 2.0**-8
    assert sinks.grad is not None and torch.isfinite(sinks.grad).all()


def test_opcheck_on_cuda():
    q, k, v = inputs((2, 64, 4, 64), (2, 64, 2, 64), torch.bfloat16)
    torch.library.opcheck(ops.attention_op, (q, k, v), dict(causal=True, return_lse=True))
    out, lse = apt.attention(q, k, v, causal=True, return_lse=True)
    torch.library.opcheck(ops.attention_backward_op,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse),
                          dict(causal=True))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_on_cuda(backend):
    torch._dynamo.reset()
    q, k, v = inputs((2, 128, 8, 64), (2, 128, 8, 64), torch.bfloat16)

    def block(q, k, v):
        return apt.attention(q * 2, k, v, causal=True).float().square().sum()

    compiled = torch.compile(block, fullgraph=True, backend=backend)
    eager_loss = block(q, k, v)
    eager = torch.autograd.grad(eager_loss, (q, k, v))
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-2, atol=1e-2)
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


# -- the current-stream contract ------------------------------------------------------------------

SLEEP_CYCLES = 200_000_000          # ~0.1 s of GPU time at ~2 GHz: long enough to see a host wait


def test_work_goes_on_the_current_stream_without_host_synchronisation():
    """On a side stream busy for ~0.1 s, q is written after the wait and attention reads it: correct
    results mean our kernels were ordered after the write on that stream (PyTorch's streams do not
    wait for the legacy default stream), and the call returning before the sleep ends means nothing
    synchronised with the host."""
    base_q, k, v = inputs((2, 256, 8, 64), (2, 256, 8, 64), torch.bfloat16, grad=False)
    want = apt.attention(base_q, k, v, causal=True)
    dout = torch.randn_like(want)
    q = base_q.clone().requires_grad_()
    want_dq, = torch.autograd.grad(apt.attention(q, k, v, causal=True), q, dout)      # warm: plans built
    side = torch.cuda.Stream()
    for _ in range(2):
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            torch.cuda._sleep(SLEEP_CYCLES)
            q = (base_q * 1.0).requires_grad_()                 # written on the side stream, after the sleep
            started = time.perf_counter()
            out = apt.attention(q, k, v, causal=True)
            dq, = torch.autograd.grad(out, q, dout)
            host_seconds = time.perf_counter() - started
            busy = not side.query()
        side.synchronize()
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        torch.testing.assert_close(dq.float(), want_dq.float(), rtol=1e-2, atol=1e-2)
    assert busy, f"the side stream finished while we were still on the host ({host_seconds:.3f} s)"


def test_explicit_stream_argument():
    q, k, v = inputs((1, 128, 4, 64), (1, 128, 4, 64), torch.float16, grad=False)
    side = torch.cuda.Stream()
    want = apt.attention(q, k, v)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(SLEEP_CYCLES)
    out = apt.attention(q, k, v, stream=side)              # on `side`, after its sleep
    side.synchronize()
    torch.testing.assert_close(out, want, rtol=0, atol=0)


# -- CUDA graphs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("features", [dict(causal=True), dict(causal=True, window=(64, 0), softcap=30.0)],
                         ids=["causal", "window_softcap"])
def test_capture_in_a_cuda_graph_and_replay(features):
    q, k, v = inputs((2, 256, 8, 64), (2, 256, 2, 64), torch.bfloat16, grad=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                          # warm-up off the capture (plans, kernels, caches)
        for _ in range(2):
            apt.attention(q, k, v, **features)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = apt.attention(q, k, v, **features)
    for seed in (1, 2):
        fresh = inputs((2, 256, 8, 64), (2, 256, 2, 64), torch.bfloat16, seed=seed, grad=False)
        for static, value in zip((q, k, v), fresh):
            static.copy_(value)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, apt.attention(*fresh, **features), rtol=0, atol=0)
