"""Property tests over random small descriptors: the reference agrees with the brute-force
per-element definition, softmax rows sum to one, empty rows are exactly zero with LSE -inf."""

import numpy as np
from hypothesis import given, settings, strategies as st

import attnplan

import brute_force


@st.composite
def problems(draw):
    heads_kv = draw(st.integers(1, 2))
    heads_q = heads_kv * draw(st.sampled_from([1, 2, 3]))
    sq, skv = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    d = draw(st.integers(1, 12))
    causal = draw(st.booleans())
    left = draw(st.integers(-1, 6))
    right = 0 if causal and draw(st.booleans()) else (-1 if causal else draw(st.integers(-1, 6)))
    window = (left, right)
    sinks = draw(st.integers(0, 3)) if left >= 0 else 0
    options = dict(causal=causal, causal_alignment=draw(st.sampled_from(["bottom_right", "top_left"])),
                   window=window, sink_tokens=sinks, softcap=draw(st.sampled_from([0.0, 1.5])))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    batch = draw(st.integers(1, 2))
    q = rng.standard_normal((batch, sq, heads_q, d))
    k = rng.standard_normal((batch, skv, heads_kv, d))
    v = rng.standard_normal((batch, skv, heads_kv, d))
    if draw(st.booleans()):
        options["alibi_slopes"] = rng.uniform(0.01, 1.0, heads_q).astype(np.float32)
    return (q, k, v), options


@settings(max_examples=40, deadline=None)
@given(problems())
def test_reference_equals_brute_force(problem):
    (q, k, v), options = problem
    out, lse = attnplan.attention(q, k, v, return_lse=True, **options)
    want_out, want_lse = brute_force.attention(q=q, k=k, v=v, **options)
    np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(want_lse))
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[finite], want_lse[finite], rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_rows_are_convex_combinations_and_empty_rows_zero(problem):
    (q, k, v), options = problem
    ones = np.ones_like(v)
    out, lse = attnplan.attention(q, k, ones, return_lse=True, **options)
    empty = np.isneginf(lse).transpose(0, 2, 1)            # [b, s, h]
    np.testing.assert_allclose(out[~empty], 1.0, rtol=1e-12)
    assert (out[empty] == 0).all()


@settings(max_examples=25, deadline=None)
@given(problems())
def test_key_order_does_not_matter_without_positions(problem):
    (q, k, v), _ = problem
    perm = np.random.default_rng(0).permutation(k.shape[1])
    a = attnplan.attention(q, k, v)
    b = attnplan.attention(q, k[:, perm], v[:, perm])
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
