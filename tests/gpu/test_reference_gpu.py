"""The reference backend on GPU arrays: CuPy arrays and PyTorch tensors in, the same type out,
equal to the NumPy reference on the same values (forward and backward)."""

import numpy as np
import pytest

import attnplan

cupy = pytest.importorskip("cupy")

FEATURES = [
    dict(),
    dict(causal=True),
    dict(causal=True, window=(5, 0), sink_tokens=2),
    dict(softcap=2.0, causal=True, causal_alignment="top_left"),
]


def _inputs(rng, sq=19, skv=23, hq=4, hkv=2, d=16):
    q = rng.standard_normal((2, sq, hq, d))
    k = rng.standard_normal((2, skv, hkv, d))
    v = rng.standard_normal((2, skv, hkv, d))
    return q, k, v


@pytest.mark.parametrize("features", FEATURES, ids=lambda f: "-".join(f) or "plain")
def test_reference_on_cupy_matches_numpy(features):
    q, k, v = _inputs(np.random.default_rng(1))
    want_out, want_lse = attnplan.attention(q, k, v, return_lse=True, backend="reference", **features)
    got_out, got_lse = attnplan.attention(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), return_lse=True,
                                          backend="reference", **features)
    assert isinstance(got_out, cupy.ndarray) and isinstance(got_lse, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got_out), want_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(got_lse), want_lse, rtol=1e-10, atol=1e-12)

    dout = np.random.default_rng(2).standard_normal(want_out.shape)
    want = attnplan.attention_backward(dout, q, k, v, want_out, want_lse, backend="reference", **features)
    got = attnplan.attention_backward(*(cupy.asarray(a) for a in (dout, q, k, v, want_out, want_lse)),
                                      backend="reference", **features)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert isinstance(g, cupy.ndarray), name
        np.testing.assert_allclose(cupy.asnumpy(g), w, rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reference_on_torch_tensors(dtype):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    tdtype = getattr(torch, dtype)
    q, k, v = (torch.from_numpy(a).to("cuda", tdtype) for a in _inputs(np.random.default_rng(3)))
    out, lse = attnplan.attention(q, k, v, causal=True, return_lse=True, backend="reference")
    assert isinstance(out, torch.Tensor) and out.dtype == tdtype and out.is_cuda
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32 and lse.shape == (2, 4, 19)
    # The same values through NumPy in float64, rounded to the output dtype.
    qn, kn, vn = (t.float().cpu().numpy().astype(np.float64) for t in (q, k, v))
    want_out, want_lse = attnplan.attention(qn, kn, vn, causal=True, return_lse=True, backend="reference")
    ulp = {"float32": 1e-6, "float16": 2**-10, "bfloat16": 2**-7}[dtype]
    np.testing.assert_allclose(out.float().cpu().numpy(), want_out, rtol=ulp, atol=ulp)
    np.testing.assert_allclose(lse.cpu().numpy(), want_lse, rtol=1e-6, atol=1e-6)
    # Against PyTorch's own math: an independent implementation.
    want_torch = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).double(), k.transpose(1, 2).double().repeat_interleave(2, 1),
        v.transpose(1, 2).double().repeat_interleave(2, 1), is_causal=False,
        attn_mask=torch.ones(19, 23, dtype=torch.bool, device="cuda").tril(23 - 19)).transpose(1, 2)
    np.testing.assert_allclose(out.double().cpu().numpy(), want_torch.cpu().numpy(), rtol=ulp, atol=ulp)


def test_reference_torch_backward():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    q, k, v = (torch.from_numpy(a).cuda().requires_grad_() for a in _inputs(np.random.default_rng(4), hkv=4))
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           is_causal=True).transpose(1, 2)
    dout = torch.randn_like(ref)
    ref.backward(dout)
    with torch.no_grad():
        out, lse = attnplan.attention(q.detach(), k.detach(), v.detach(), causal=True, causal_alignment="top_left",
                                      return_lse=True, backend="reference")
        dq, dk, dv = attnplan.attention_backward(dout, q.detach(), k.detach(), v.detach(), out, lse, causal=True,
                                                 causal_alignment="top_left", backend="reference")
    torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-10)
    for name, got, want in (("dq", dq, q.grad), ("dk", dk, k.grad), ("dv", dv, v.grad)):
        assert isinstance(got, torch.Tensor) and got.is_cuda, name
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)
