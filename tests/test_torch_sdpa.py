"""attnplan.torch.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention
(math backend, float64): forward and gradients for every feature both have, PyTorch's errors, and a
tiny transformer block trained both ways."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import attnplan.torch as apt  # noqa: E402
from torch_block import train  # noqa: E402

F64 = torch.float64


def tensors(*shapes, dtype=F64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, dtype=dtype, generator=generator).requires_grad_() for shape in shapes]


def torch_sdpa(*args, **kwargs):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kwargs)


def assert_same_forward_and_gradients(query, key, value, tol=1e-12, **kwargs):
    ours = apt.scaled_dot_product_attention(query, key, value, **kwargs)
    theirs = torch_sdpa(query, key, value, **kwargs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    grad = torch.randn(ours.shape, dtype=ours.dtype, generator=torch.Generator().manual_seed(1))
    inputs = [x for x in (query, key, value) if x.requires_grad]
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# -- features ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seqlen_q, seqlen_kv", [(6, 6), (4, 9), (9, 4)], ids=["square", "short_q", "long_q"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal_top_left"])
def test_causal_is_top_left_as_in_pytorch(seqlen_q, seqlen_kv, is_causal):
    q, k, v = tensors((2, 3, seqlen_q, 8), (2, 3, seqlen_kv, 8), (2, 3, seqlen_kv, 8))
    assert_same_forward_and_gradients(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (3, 5, 7), (2, 3, 5, 7), (1, 5, 1), (1, 7)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_broadcast_and_become_the_bias(mask_shape, kind):
    q, k, v = tensors((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6))
    generator = torch.Generator().manual_seed(2)
    if kind == "bool":
        mask = torch.rand(mask_shape, generator=generator) > 0.3     # True = attend; some rows fully masked
    else:
        mask = torch.randn(mask_shape, dtype=F64, generator=generator)
    assert_same_forward_and_gradients(q, k, v, attn_mask=mask)


def test_a_fully_masked_row_gives_zeros_as_in_pytorch():
    q, k, v = tensors((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    assert_same_forward_and_gradients(q, k, v, attn_mask=mask)
    assert apt.scaled_dot_product_attention(q, k, v, attn_mask=mask)[:, :, 1].abs().max() == 0


@pytest.mark.parametrize("heads_kv", [1, 2, 6])
def test_gqa(heads_kv):
    q, k, v = tensors((2, 6, 5, 8), (2, heads_kv, 7, 8), (2, heads_kv, 7, 8))
    assert_same_forward_and_gradients(q, k, v, enable_gqa=True, is_causal=True)


def test_scale_and_value_head_dim():
    q, k, v = tensors((2, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 3))
    assert_same_forward_and_gradients(q, k, v, scale=0.37)


@pytest.mark.parametrize("shape", [(5, 8), (3, 5, 8), (2, 3, 2, 5, 8)], ids=["2d", "3d", "5d"])
def test_any_rank_extra_batch_dims_are_flattened(shape):
    kv_shape = shape[:-2] + (7, shape[-1])
    q, k, v = tensors(shape, kv_shape, kv_shape)
    mask = torch.randn(shape[:-1] + (7,), dtype=F64)
    assert_same_forward_and_gradients(q, k, v, attn_mask=mask)
    assert_same_forward_and_gradients(q, k, v, is_causal=True)


def test_strided_inputs_are_served():
    base = tensors((2, 5, 3, 16))[0]
    q = base[..., :8].transpose(1, 2)                        # [2, 3, 5, 8], outer strides free
    k = base[..., 8:].transpose(1, 2).transpose(-1, -2).contiguous().transpose(-1, -2)   # innermost stride 5
    assert k.stride(-1) != 1
    assert_same_forward_and_gradients(q, k, k)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_inputs(dtype, tol):
    q, k, v = tensors((2, 2, 6, 16), (2, 2, 6, 16), (2, 2, 6, 16), dtype=dtype)
    out = apt.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = torch_sdpa(*(x.detach().double() for x in (q, k, v)), is_causal=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    out.sum().backward()
    assert q.grad.dtype == dtype and torch.isfinite(q.grad.float()).all()


def test_dropout_statistics():
    """The masks differ from PyTorch's (ours are Philox, docs/semantics.md); the statistics agree:
    the expected output is the dropout-free one, and about dropout_p of the weights are dropped."""
    q, k, v = tensors((1, 4, 64, 8), (1, 4, 64, 8), (1, 4, 64, 8))
    v_ones = torch.ones_like(v)
    torch.manual_seed(0)
    kept = apt.scaled_dot_product_attention(q, k, v_ones, dropout_p=0.25)   # row sums of P * keep / (1 - p)
    assert abs(kept.mean().item() - 1.0) < 0.02
    runs = torch.stack([apt.scaled_dot_product_attention(q, k, v, dropout_p=0.25) for _ in range(32)])
    torch.testing.assert_close(runs.mean(0), torch_sdpa(q, k, v), rtol=0, atol=0.2)


# -- our extras through the drop-in --------------------------------------------------------------

def test_extras_window_softcap_alibi_and_sinks():
    q, k, v = tensors((2, 2, 6, 8), (2, 2, 6, 8), (2, 2, 6, 8))
    sinks = torch.tensor([0.5, -1.0], requires_grad=True)
    slopes = torch.tensor([0.25, 0.5])
    out = apt.scaled_dot_product_attention(q, k, v, is_causal=True, window=(2, 0), softcap=5.0,
                                           alibi_slopes=slopes, sink_logits=sinks)
    import attnplan
    want = attnplan.attention(*(x.detach().transpose(1, 2).numpy() for x in (q, k, v)), causal=True,
                              causal_alignment="top_left", window=(2, 0), softcap=5.0,
                              alibi_slopes=slopes.numpy(), sink_logits=sinks.detach().numpy())
    torch.testing.assert_close(out.detach().transpose(1, 2), torch.from_numpy(want), rtol=0, atol=0)
    out.sum().backward()
    assert sinks.grad is not None and q.grad is not None


def test_backend_pin_and_policy_pass_through():
    q, k, v = tensors((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8))
    plain = apt.scaled_dot_product_attention(q, k, v)
    pinned = apt.scaled_dot_product_attention(q, k, v, backend="reference", policy="first")
    torch.testing.assert_close(plain, pinned, rtol=0, atol=0)


# -- PyTorch's errors ------------------------------------------------------------------------------

def test_mask_and_causal_are_exclusive():
    q, k, v = tensors((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8))
    with pytest.raises(ValueError, match="exclusive"):
        apt.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.bool), is_causal=True)


def test_grouped_heads_need_enable_gqa():
    q, k, v = tensors((1, 4, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8))
    with pytest.raises(ValueError, match="enable_gqa"):
        apt.scaled_dot_product_attention(q, k, v)


def test_a_mask_that_wants_a_gradient_is_refused():
    q, k, v = tensors((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8))
    with pytest.raises(ValueError, match="no gradient"):
        apt.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(4, 4, dtype=F64, requires_grad=True))


# -- a tiny transformer block, trained both ways ---------------------------------------------------

def test_a_transformer_block_trains_to_the_same_loss():
    ours, theirs = train(apt.scaled_dot_product_attention), train(torch_sdpa)
    assert ours[-1] < ours[0]
    assert ours == pytest.approx(theirs, rel=1e-10)


def test_the_example_in_docs_pytorch_runs(monkeypatch):
    from pathlib import Path
    page = Path(__file__).resolve().parents[1] / "docs" / "pytorch.md"
    if not page.is_file():
        pytest.skip("docs/ is not beside the tests (installed-wheel run)")
    blocks = page.read_text().split("```python\n")
    example = next(block.split("```")[0] for block in blocks[1:] if "class Block" in block)
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **dict(kw, backend="aot_eager")))
    torch._dynamo.reset()
    exec(compile(example, str(page), "exec"), {})
