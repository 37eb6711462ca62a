"""JAX arrays in and out (issue 15, item 3): results come back as jax.Array on the caller's device, bf16
works, and a traced call (jax.jit) fails with a message saying what to do.  Skips without JAX.

Run by tests/test_jax.py in a process of its own: JAX starts threads, and a process that has imported
it must not fork (the kernel compile pool does), so these cases never share the suite's process."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import attnplan  # noqa: E402
from attnplan.errors import InvalidArguments  # noqa: E402


def _qkv(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal((2, 9, 2, 16)), dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_jax_arrays_come_back_as_jax_arrays_with_the_numpy_answer(dtype):
    q, k, v = _qkv(getattr(jnp, dtype))
    out, lse = attnplan.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, jax.Array) and isinstance(lse, jax.Array)
    assert out.dtype == q.dtype and lse.dtype == jnp.float32 and out.shape == q.shape
    assert out.devices() == q.devices()
    want, want_lse = attnplan.attention(*(np.asarray(x) for x in (q, k, v)), causal=True, return_lse=True)
    assert np.array_equal(np.asarray(out), want) and np.array_equal(np.asarray(lse), want_lse)


def test_the_backward_returns_jax_gradients():
    q, k, v = _qkv(jnp.float32, seed=1)
    dout = _qkv(jnp.float32, seed=2)[0]
    out, lse = attnplan.attention(q, k, v, return_lse=True)
    grads = attnplan.attention_backward(dout, q, k, v, out, lse)
    host = [np.asarray(x) for x in (dout, q, k, v, out, lse)]
    want = attnplan.attention_backward(*host)
    for got, exp in zip(grads, want):
        assert isinstance(got, jax.Array) and np.array_equal(np.asarray(got), exp)


def test_a_traced_call_says_jit_is_not_supported_yet():
    q, k, v = _qkv(jnp.float32)
    with pytest.raises(InvalidArguments, match=r"argument 'q': is a JAX tracer .*does not support tracing yet"):
        jax.jit(lambda q: attnplan.attention(q, k, v))(q)


def test_a_jax_out_is_refused_because_jax_arrays_are_immutable():
    q, k, v = _qkv(jnp.float32)
    with pytest.raises(InvalidArguments, match=r"argument 'out': is a JAX array, which is immutable"):
        attnplan.attention(q, k, v, out=jnp.zeros_like(q))
