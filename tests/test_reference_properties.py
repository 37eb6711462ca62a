"""Property tests of the reference backend over random small problems (hypothesis): agreement with the
brute-force definition, softmax rows that sum to one (or to 1 - the sink's share), exact zeros and
-inf for rows without visible keys, key-order invariance, independence of the row-chunk size, and
varlen / paged layouts that agree with per-sequence dense problems."""

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import attnplan
from attnplan.backends.reference import math as reference_math

import brute_force

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
F64 = dict(rtol=1e-10, atol=1e-12)
SEED = 0x0123_4567_89AB_CDEF


@st.composite
def problems(draw, *, positions=True, dropout=True, sinks=True, layouts=("bshd", "bhsd")):
    """Keyword arguments of attnplan.attention / brute_force.attention for one random problem.
    positions=False draws no mask and no ALiBi (key order then does not matter)."""
    batch = draw(st.integers(1, 2))
    heads_kv = draw(st.integers(1, 2))
    heads_q = heads_kv * draw(st.integers(1, 3))
    seqlen_q, seqlen_kv = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    head_dim = draw(st.integers(1, 16))
    head_dim_v = draw(st.one_of(st.just(head_dim), st.integers(1, 16)))
    layout = draw(st.sampled_from(layouts))
    options = dict(layout=layout)
    if positions:
        causal = draw(st.booleans())
        left = draw(st.integers(-1, 6))
        right = draw(st.sampled_from([-1, 0])) if causal else draw(st.integers(-1, 6))
        options.update(causal=causal, causal_alignment=draw(st.sampled_from(["bottom_right", "top_left"])),
                       window=(left, right), sink_tokens=draw(st.integers(0, 3)) if left >= 0 else 0)
    options["softcap"] = draw(st.sampled_from([0.0, 0.7, 4.0]))
    scale = draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    if scale is not None:
        options["scale"] = scale
    if dropout and draw(st.booleans()):
        options.update(dropout_p=draw(st.sampled_from([0.2, 0.5])), dropout_seed=draw(st.integers(0, 2**64 - 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    alibi = draw(st.sampled_from([None, "heads", "batch_heads"])) if positions else None
    if alibi == "heads":
        options["alibi_slopes"] = rng.uniform(0.0, 1.0, heads_q).astype(np.float32)
    elif alibi == "batch_heads":
        options["alibi_slopes"] = rng.uniform(0.0, 1.0, (batch, heads_q)).astype(np.float32)
    if sinks and draw(st.booleans()):
        options["sink_logits"] = rng.uniform(-2.0, 2.0, heads_q).astype(np.float32)
    spread = draw(st.sampled_from([1.0, 3.0]))                 # larger logits: peakier softmax
    if layout == "bhsd":
        q_shape, kv_shape = (batch, heads_q, seqlen_q), (batch, heads_kv, seqlen_kv)
    else:
        q_shape, kv_shape = (batch, seqlen_q, heads_q), (batch, seqlen_kv, heads_kv)
    options["q"] = spread * rng.standard_normal(q_shape + (head_dim,))
    options["k"] = rng.standard_normal(kv_shape + (head_dim,))
    options["v"] = rng.standard_normal(kv_shape + (head_dim_v,))
    return options


def to_bshd(args):
    """The same problem in layout bshd (a no-op for bshd)."""
    if args["layout"] == "bshd":
        return args
    return dict(args, layout="bshd", **{n: args[n].transpose(0, 2, 1, 3) for n in ("q", "k", "v")})


def empty_rows(args):
    """Boolean [batch, heads_q, seqlen_q]: rows that see no key (from brute_force's visibility rule)."""
    bshd = to_bshd(args)
    batch, seqlen_q, heads_q, _ = bshd["q"].shape
    seqlen_kv = bshd["k"].shape[1]
    rule = dict(causal=args.get("causal", False), causal_alignment=args.get("causal_alignment", "bottom_right"),
                window=tuple(args.get("window", (-1, -1))), sink_tokens=args.get("sink_tokens", 0))
    row_empty = np.array([not any(brute_force.is_visible(i, j, seqlen_q, seqlen_kv, **rule) for j in range(seqlen_kv))
                          for i in range(seqlen_q)])
    return np.broadcast_to(row_empty, (batch, heads_q, seqlen_q))


def reference(args, **extra):
    return attnplan.attention(**args, return_lse=True, **extra)


@settings(max_examples=50, **SETTINGS)
@given(problems())
def test_reference_matches_brute_force(args):
    out, lse = reference(args)
    want_out, want_lse = brute_force.attention(**args)
    assert out.shape == want_out.shape and lse.shape == want_lse.shape
    np.testing.assert_allclose(out, want_out, **F64)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    np.testing.assert_allclose(lse, want_lse, **F64)


@settings(max_examples=40, **SETTINGS)
@given(problems(dropout=False))
def test_softmax_weights_sum_to_one_and_empty_rows_are_exact(args):
    ones = dict(args, v=np.ones(args["v"].shape[:-1] + (3,)))
    out, lse = reference(ones)
    row_sums = out.transpose(0, 2, 1, 3) if args["layout"] == "bshd" else out         # [b, h, s, 3]
    empty = empty_rows(args)
    sinks = args.get("sink_logits")
    if sinks is None:
        expected = np.where(empty, 0.0, 1.0)
        assert np.isneginf(lse[empty]).all()
    else:                                      # the sink logit takes its share of the denominator
        sigma = np.broadcast_to(sinks.astype(np.float64)[None, :, None], lse.shape)
        expected = 1.0 - np.exp(sigma - lse)
        np.testing.assert_array_equal(lse[empty], sigma[empty])
    assert np.isfinite(lse[~empty]).all()
    np.testing.assert_allclose(row_sums, np.broadcast_to(expected[..., None], row_sums.shape), rtol=1e-12, atol=1e-12)
    assert (row_sums[empty] == 0.0).all()      # exactly zero, not merely small
    plain_out, _ = reference(args)
    plain_rows = plain_out.transpose(0, 2, 1, 3) if args["layout"] == "bshd" else plain_out
    assert (plain_rows[empty] == 0.0).all()


@settings(max_examples=40, **SETTINGS)
@given(problems(positions=False, dropout=False), st.randoms(use_true_random=False))
def test_key_order_does_not_matter_without_positions(args, random):
    axis = 1 if args["layout"] == "bshd" else 2
    order = list(range(args["k"].shape[axis]))
    random.shuffle(order)
    permuted = dict(args, k=np.take(args["k"], order, axis=axis), v=np.take(args["v"], order, axis=axis))
    out, lse = reference(args)
    out_p, lse_p = reference(permuted)
    np.testing.assert_allclose(out_p, out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse_p, lse, rtol=1e-12, atol=1e-13)


@contextlib.contextmanager
def score_block(elements):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reference_math, "SCORE_BLOCK_ELEMENTS", elements)
        yield


def test_chunk_size_option_really_splits_rows():
    desc = attnplan.AttentionDescriptor(batch=1, seqlen_q=9, seqlen_kv=4, heads_q=2, heads_kv=1, head_dim=4)
    assert len(list(reference_math.row_chunks(desc, 9, 4))) == 1
    with score_block(1):
        assert list(reference_math.row_chunks(desc, 9, 4)) == [(i, i + 1) for i in range(9)]
    with score_block(2 * 4 * 3):
        assert list(reference_math.row_chunks(desc, 9, 4)) == [(0, 3), (3, 6), (6, 9)]


@settings(max_examples=30, **SETTINGS)
@given(problems(), st.integers(1, 40))
def test_results_do_not_depend_on_the_row_chunk_size(args, elements):
    out, lse = reference(args)
    grad_args = {n: a for n, a in args.items() if n not in ("q", "k", "v")}
    dout = np.random.default_rng(5).standard_normal(out.shape)
    grads = attnplan.attention_backward(dout, args["q"], args["k"], args["v"], out, lse, **grad_args)
    with score_block(elements):
        out_c, lse_c = reference(args)
        grads_c = attnplan.attention_backward(dout, args["q"], args["k"], args["v"], out, lse, **grad_args)
    np.testing.assert_allclose(out_c, out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse_c, lse, rtol=1e-12, atol=1e-13)
    for got, want in zip(grads_c, grads):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@st.composite
def packed_problems(draw):
    """A varlen (thd) problem and the per-sequence lengths it packs."""
    args = draw(problems(dropout=False, layouts=("bshd",)))
    args.pop("alibi_slopes", None)
    batch = draw(st.integers(1, 3))
    # Some sequence must be non-empty: see test_varlen_with_no_rows_at_all for the all-empty case.
    lengths_q = draw(st.lists(st.integers(0, 6), min_size=batch, max_size=batch).filter(any))
    lengths_kv = draw(st.lists(st.integers(0, 6), min_size=batch, max_size=batch).filter(any))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads_q, head_dim = args["q"].shape[2:]
    heads_kv, head_dim_v = args["v"].shape[2:]
    args.update(layout="thd", q=rng.standard_normal((sum(lengths_q), heads_q, head_dim)),
                k=rng.standard_normal((sum(lengths_kv), heads_kv, head_dim)),
                v=rng.standard_normal((sum(lengths_kv), heads_kv, head_dim_v)),
                cu_seqlens_q=np.concatenate([[0], np.cumsum(lengths_q)]).astype(np.int32),
                cu_seqlens_kv=np.concatenate([[0], np.cumsum(lengths_kv)]).astype(np.int32),
                max_seqlen_q=max(1, max(lengths_q)), max_seqlen_kv=max(1, max(lengths_kv)))
    return args, lengths_q, lengths_kv


@settings(max_examples=30, **SETTINGS)
@given(packed_problems())
def test_varlen_is_each_sequence_on_its_own(problem):
    args, lengths_q, lengths_kv = problem
    out, lse = reference(args)
    assert out.shape == args["q"].shape[:2] + args["v"].shape[2:] and lse.shape == (args["q"].shape[1], sum(lengths_q))
    cu_q, cu_kv = args["cu_seqlens_q"], args["cu_seqlens_kv"]
    dense_options = {n: a for n, a in args.items()
                     if n not in ("q", "k", "v", "layout", "cu_seqlens_q", "cu_seqlens_kv", "max_seqlen_q",
                                  "max_seqlen_kv")}
    for b, (len_q, len_kv) in enumerate(zip(lengths_q, lengths_kv)):
        rows = slice(cu_q[b], cu_q[b + 1])
        if len_q == 0:
            continue
        if len_kv == 0:                        # nothing to attend to: zeros, and -inf (or the sink logit)
            assert (out[rows] == 0).all()
            sinks = args.get("sink_logits")
            want = -np.inf if sinks is None else sinks.astype(np.float64)[:, None]
            np.testing.assert_array_equal(lse[:, rows], np.broadcast_to(want, lse[:, rows].shape))
            continue
        keys = slice(cu_kv[b], cu_kv[b + 1])
        one_out, one_lse = reference(dict(dense_options, q=args["q"][None, rows], k=args["k"][None, keys],
                                          v=args["v"][None, keys]))
        np.testing.assert_allclose(out[rows], one_out[0], **F64)
        np.testing.assert_allclose(lse[:, rows], one_lse[0], **F64)


@settings(max_examples=25, **SETTINGS)
@given(problems(layouts=("bshd",)), st.integers(1, 4), st.data())
def test_paged_cache_equals_dense_keys(args, page_size, data):
    batch, seqlen_kv, heads_kv = args["k"].shape[:3]
    lengths = data.draw(st.lists(st.integers(0, seqlen_kv), min_size=batch, max_size=batch))
    pages_per_seq = -(-seqlen_kv // page_size)
    num_pages = batch * pages_per_seq + 2
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    table = rng.permutation(num_pages)[: batch * pages_per_seq].reshape(batch, pages_per_seq).astype(np.int32)
    caches = {}
    for name in ("k", "v"):
        cache = rng.standard_normal((num_pages, page_size) + args[name].shape[2:]) * 100.0    # junk everywhere
        for b in range(batch):
            for j in range(lengths[b]):
                cache[table[b, j // page_size], j % page_size] = args[name][b, j]
        caches[name] = cache
    paged = dict(args, k=caches["k"], v=caches["v"], block_table=table,
                 seqlens_kv=np.asarray(lengths, np.int32), max_seqlen_kv=seqlen_kv)
    out, lse = reference(paged)
    want_out, want_lse = brute_force.attention(**paged)
    np.testing.assert_allclose(out, want_out, **F64)
    np.testing.assert_allclose(lse, want_lse, **F64)
    per_sequence = {n: a for n, a in args.items() if n not in ("q", "k", "v", "alibi_slopes", "dropout_seed",
                                                               "dropout_p")}
    for b, length in enumerate(lengths):
        if length == 0 or "dropout_p" in args:
            continue
        slopes = args.get("alibi_slopes")
        if slopes is not None:
            per_sequence["alibi_slopes"] = slopes if slopes.ndim == 1 else slopes[b:b + 1]
        one_out, one_lse = reference(dict(per_sequence, q=args["q"][b:b + 1], k=args["k"][b:b + 1, :length],
                                          v=args["v"][b:b + 1, :length]))
        np.testing.assert_allclose(out[b], one_out[0], **F64)
        np.testing.assert_allclose(lse[b], one_lse[0], **F64)


def test_varlen_with_no_rows_at_all():
    k = np.random.default_rng(0).standard_normal((3, 2, 8))
    out, lse = attnplan.attention(np.zeros((0, 2, 8)), k, k, layout="thd", cu_seqlens_q=np.array([0, 0], np.int32),
                                  cu_seqlens_kv=np.array([0, 3], np.int32), max_seqlen_q=1, return_lse=True)
    assert out.shape == (0, 2, 8) and lse.shape == (2, 0)
