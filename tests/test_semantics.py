"""The reference backend against the brute-force definition (tests/brute_force.py): every
feature alone and in combination, odd sizes, GQA, every layout, varlen, paged KV, empty rows,
dropout bit for bit, and low-precision inputs."""

import itertools

import numpy as np
import pytest

import attnplan
from attnplan.philox import dropout_keep_mask

import brute_force
from problems import DTYPES, make_problem

F64_TOLERANCE = dict(rtol=1e-11, atol=1e-12)
SEED = 0x1234_5678_9ABC_DEF0          # a seed with both key words non-zero


def run(args, **options):
    """(out, lse) of the reference through the public API."""
    return attnplan.attention(**args, return_lse=True, **options)


def assert_matches_brute(args, **options):
    out, lse = run(args, **options)
    want_out, want_lse = brute_force.attention(**args, **options)
    assert out.dtype == np.float64 and lse.dtype == np.float64
    assert out.shape == want_out.shape and lse.shape == want_lse.shape
    np.testing.assert_allclose(out, want_out, **F64_TOLERANCE)
    np.testing.assert_allclose(lse, want_lse, **F64_TOLERANCE)   # -inf must sit where brute has it
    return out, lse


def base_problem(seed=0, **overrides):
    """2 sequences, 5 queries x 7 keys, GQA 4:2, with ALiBi slopes and sink logits available."""
    kwargs = dict(batch=2, seqlen_q=5, seqlen_kv=7, heads_q=4, heads_kv=2, head_dim=8,
                  alibi="heads", sink_logits=True)
    kwargs.update(overrides)
    return make_problem(np.random.default_rng(seed), **kwargs)


def without(args, *names):
    return {k: v for k, v in args.items() if k not in names}


# -- every feature alone ---------------------------------------------------------------------

FEATURES = {
    # name: (arrays the feature needs, options)
    "causal": ((), dict(causal=True)),
    "causal_top_left": ((), dict(causal=True, causal_alignment="top_left")),
    "window_both_sides": ((), dict(window=(2, 1))),
    "window_left_only": ((), dict(window=(1, -1))),
    "window_right_only": ((), dict(window=(-1, 0))),
    "window_diagonal_only": ((), dict(window=(0, 0))),
    "window_top_left": ((), dict(window=(1, 1), causal_alignment="top_left")),
    "sink_tokens": ((), dict(window=(1, 0), sink_tokens=2)),
    "softcap": ((), dict(softcap=0.4)),
    "alibi": (("alibi_slopes",), {}),
    "sink_logits": (("sink_logits",), {}),
    "scale": ((), dict(scale=0.9)),
    "dropout": ((), dict(dropout_p=0.3, dropout_seed=SEED)),
}
EXTRAS = ("alibi_slopes", "sink_logits")


def feature_args(base, needs):
    return without(base, *(name for name in EXTRAS if name not in needs))


def test_plain_attention_matches_brute():
    assert_matches_brute(without(base_problem(), *EXTRAS))


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_feature_alone(feature):
    needs, options = FEATURES[feature]
    args = feature_args(base_problem(), needs)
    out, _ = assert_matches_brute(args, **options)
    plain, _ = run(without(args, *EXTRAS))
    assert not np.allclose(out, plain), f"{feature} changed nothing: the case does not test it"


def test_alibi_per_batch_slopes():
    args = without(base_problem(alibi="batch_heads"), "sink_logits")
    out, _ = assert_matches_brute(args, causal=True)
    first_row = dict(args, alibi_slopes=np.broadcast_to(args["alibi_slopes"][0], (2, 4)).copy())
    assert not np.allclose(out[1], run(first_row, causal=True)[0][1])


def test_head_dim_v_differs():
    args = without(base_problem(head_dim=8, head_dim_v=5), *EXTRAS)
    out, _ = assert_matches_brute(args, causal=True)
    assert out.shape == (2, 5, 4, 5)


# -- combinations -----------------------------------------------------------------------------

COMBINABLE = {
    "causal": ((), dict(causal=True)),
    "top_left": ((), dict(causal_alignment="top_left")),
    "window": ((), dict(window=(2, 0))),
    "sinks": ((), dict(window=(1, 0), sink_tokens=2)),
    "softcap": ((), dict(softcap=0.6)),
    "alibi": (("alibi_slopes",), {}),
    "sink_logits": (("sink_logits",), {}),
    "dropout": ((), dict(dropout_p=0.25, dropout_seed=SEED)),
}


def combined(names):
    needs, options = (), {}
    for name in names:
        extra_needs, extra_options = COMBINABLE[name]
        needs += extra_needs
        options.update(extra_options)
    return needs, options


@pytest.mark.parametrize("names", list(itertools.combinations(sorted(COMBINABLE), 2)),
                         ids=lambda names: "+".join(names))
def test_feature_pairs(names):
    needs, options = combined(names)
    assert_matches_brute(feature_args(base_problem(seed=1), needs), **options)


@pytest.mark.parametrize("layout", ["bshd", "bhsd", "thd"])
def test_everything_at_once(layout):
    needs, options = combined(sorted(set(COMBINABLE) - {"window"}))
    overrides = dict(layout=layout)
    if layout == "thd":
        overrides.update(lengths_q=[4, 1, 5], lengths_kv=[7, 3, 0], alibi="batch_heads")
    assert_matches_brute(feature_args(base_problem(seed=2, **overrides), needs), **options)


# -- odd sizes, alignments, GQA ---------------------------------------------------------------

SIZES = [(1, 1), (1, 17), (17, 1), (17, 17), (5, 17), (17, 5)]
MASKS = {
    "none": {},
    "causal": dict(causal=True),
    "causal_window_sinks": dict(causal=True, window=(3, 0), sink_tokens=1),
    "window": dict(window=(2, 3)),
}


@pytest.mark.parametrize("seqlen_q, seqlen_kv", SIZES)
@pytest.mark.parametrize("alignment", ["bottom_right", "top_left"])
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_odd_sizes(seqlen_q, seqlen_kv, alignment, mask):
    args = without(base_problem(seed=3, seqlen_q=seqlen_q, seqlen_kv=seqlen_kv, heads_q=2, heads_kv=1,
                                head_dim=5), "sink_logits")
    assert_matches_brute(args, causal_alignment=alignment, **MASKS[mask])


@pytest.mark.parametrize("heads_q, heads_kv", [(4, 4), (4, 2), (4, 1)])
def test_gqa_matches_brute_and_repeated_heads(heads_q, heads_kv):
    args = base_problem(seed=4, heads_q=heads_q, heads_kv=heads_kv)
    options = dict(causal=True, window=(3, 0), dropout_p=0.2, dropout_seed=SEED)
    out, lse = assert_matches_brute(args, **options)
    group = heads_q // heads_kv
    repeated = dict(args, k=np.repeat(args["k"], group, axis=2), v=np.repeat(args["v"], group, axis=2))
    mha_out, mha_lse = run(repeated, **options)
    np.testing.assert_allclose(out, mha_out, **F64_TOLERANCE)
    np.testing.assert_allclose(lse, mha_lse, **F64_TOLERANCE)


# -- layouts ----------------------------------------------------------------------------------

def test_bhsd_is_bshd_transposed():
    args = base_problem(seed=5)
    options = dict(causal=True, softcap=0.8, dropout_p=0.1, dropout_seed=SEED)
    out, lse = assert_matches_brute(args, **options)
    transposed = dict(args, layout="bhsd", **{n: args[n].transpose(0, 2, 1, 3) for n in ("q", "k", "v")})
    out_bhsd, lse_bhsd = assert_matches_brute(transposed, **options)
    np.testing.assert_allclose(out_bhsd.transpose(0, 2, 1, 3), out, **F64_TOLERANCE)
    np.testing.assert_allclose(lse_bhsd, lse, **F64_TOLERANCE)


VARLEN_LENGTHS = [
    # (lengths_q, lengths_kv): a length-1 q sequence, a length-0 kv sequence, a length-0 q one
    ([1, 6, 4, 3], [3, 0, 5, 9]),
    ([5, 0, 2], [1, 4, 9]),
]


@pytest.mark.parametrize("lengths_q, lengths_kv", VARLEN_LENGTHS)
@pytest.mark.parametrize("options", [dict(causal=True), dict(causal=True, causal_alignment="top_left"),
                                     dict(window=(1, 1), sink_tokens=1),
                                     dict(dropout_p=0.3, dropout_seed=SEED, softcap=1.0)],
                         ids=["causal", "causal_top_left", "window_sinks", "dropout_softcap"])
def test_varlen_matches_brute(lengths_q, lengths_kv, options):
    args = make_problem(np.random.default_rng(6), layout="thd", lengths_q=lengths_q, lengths_kv=lengths_kv,
                        seqlen_q=6, seqlen_kv=9, heads_q=4, heads_kv=2, alibi="batch_heads", sink_logits=True)
    assert_matches_brute(args, **options)


def test_varlen_random_lengths():
    rng = np.random.default_rng(7)
    for _ in range(3):
        lengths_q = list(rng.integers(0, 9, 4))
        lengths_kv = list(rng.integers(0, 9, 4))
        args = make_problem(rng, layout="thd", lengths_q=lengths_q, lengths_kv=lengths_kv, seqlen_q=8,
                            seqlen_kv=8, heads_q=2, heads_kv=1)
        assert_matches_brute(args, causal=True, window=(2, 0))


def test_varlen_is_per_sequence_dense():
    """Each varlen sequence gives what a batch-1 dense call on that sequence gives."""
    lengths_q, lengths_kv = [3, 1, 6], [5, 2, 6]
    args = make_problem(np.random.default_rng(8), layout="thd", lengths_q=lengths_q, lengths_kv=lengths_kv,
                        seqlen_q=6, seqlen_kv=6, heads_q=2, heads_kv=2)
    options = dict(causal=True, dropout_p=0.2, dropout_seed=SEED)
    out, lse = run(args, **options)
    cu_q, cu_kv = args["cu_seqlens_q"], args["cu_seqlens_kv"]
    for b in range(len(lengths_q)):
        rows, cols = slice(cu_q[b], cu_q[b + 1]), slice(cu_kv[b], cu_kv[b + 1])
        dense = {n: args[n][s][None] for n, s in (("q", rows), ("k", cols), ("v", cols))}
        if b == 0:   # sequence 0 of varlen is batch 0 of dense: dropout masks agree too
            dense_out, dense_lse = run(dense, **options)
        else:        # other indices draw other dropout masks: compare without dropout
            dense_out, dense_lse = run(dense, causal=True)
            out_b, lse_b = run(args, causal=True)
            np.testing.assert_allclose(out_b[rows], dense_out[0], **F64_TOLERANCE)
            np.testing.assert_allclose(lse_b[:, rows], dense_lse[0], **F64_TOLERANCE)
            continue
        np.testing.assert_allclose(out[rows], dense_out[0], **F64_TOLERANCE)
        np.testing.assert_allclose(lse[:, rows], dense_lse[0], **F64_TOLERANCE)


# -- paged KV ---------------------------------------------------------------------------------

@pytest.mark.parametrize("q_layout", ["bshd", "thd"])
@pytest.mark.parametrize("options", [{}, dict(causal=True), dict(causal=True, window=(2, 0), sink_tokens=1,
                                                                  softcap=0.7)],
                         ids=["plain", "causal", "causal_window_sinks_softcap"])
def test_paged_matches_brute(q_layout, options):
    extra = dict(layout="thd", lengths_q=[3, 1, 4]) if q_layout == "thd" else dict(batch=3)
    args = make_problem(np.random.default_rng(9), page_size=4, pages_per_seq=3, lengths_kv=[5, 12, 0],
                        seqlen_q=4, seqlen_kv=12, heads_q=4, heads_kv=2, alibi="heads", **extra)
    assert_matches_brute(args, **options)


def test_paged_equals_dense_gathered_cache():
    rng = np.random.default_rng(10)
    lengths_kv = [6, 9]
    args = make_problem(rng, batch=2, seqlen_q=3, seqlen_kv=9, page_size=3, pages_per_seq=3,
                        lengths_kv=lengths_kv, heads_q=2, heads_kv=1)
    table = args["block_table"]
    assert not np.array_equal(np.sort(table.ravel()), table.ravel()), "block table should be shuffled"
    out, lse = run(args, causal=True)
    for b, length in enumerate(lengths_kv):
        dense = {n: args[n][table[b]].reshape(-1, 1, 8)[:length][None] for n in ("k", "v")}
        dense_out, dense_lse = run({"q": args["q"][b:b + 1], **dense}, causal=True)
        np.testing.assert_allclose(out[b], dense_out[0], **F64_TOLERANCE)
        np.testing.assert_allclose(lse[b], dense_lse[0], **F64_TOLERANCE)


# -- empty rows -------------------------------------------------------------------------------

def test_empty_rows_give_zero_and_minus_inf():
    # bottom-right causal with 6 queries and 3 keys: rows 0..2 see nothing (j <= i - 3).
    args = without(base_problem(seed=11, seqlen_q=6, seqlen_kv=3), *EXTRAS)
    out, lse = assert_matches_brute(args, causal=True)
    assert (out[:, :3] == 0).all()
    assert np.isneginf(lse[:, :, :3]).all()
    assert np.isfinite(lse[:, :, 3:]).all() and (out[:, 3:] != 0).any()


def test_empty_rows_with_sink_logits_have_lse_equal_to_the_sink():
    args = without(base_problem(seed=11, seqlen_q=6, seqlen_kv=3), "alibi_slopes")
    out, lse = assert_matches_brute(args, causal=True)
    sinks = args["sink_logits"].astype(np.float64)
    assert (out[:, :3] == 0).all()
    np.testing.assert_array_equal(lse[:, :, :3], np.broadcast_to(sinks[None, :, None], (2, 4, 3)))


def test_empty_kv_sequence_in_varlen():
    args = make_problem(np.random.default_rng(12), layout="thd", lengths_q=[2, 3], lengths_kv=[4, 0],
                        seqlen_q=3, seqlen_kv=4, heads_q=2, heads_kv=2, sink_logits=True)
    out, lse = assert_matches_brute(args)
    assert (out[2:] == 0).all()
    np.testing.assert_array_equal(lse[:, 2:], np.repeat(args["sink_logits"].astype(np.float64)[:, None], 3, 1))
    out_plain, lse_plain = run(without(args, "sink_logits"))
    assert (out_plain[2:] == 0).all() and np.isneginf(lse_plain[:, 2:]).all()


# -- dropout, bit for bit ---------------------------------------------------------------------

def _keep_mask_from_outputs(out_per_head):
    """With v[j] = e_j (one-hot), out[i, j] = P_ij * keep_ij / (1 - p): the mask is out != 0."""
    return out_per_head != 0


@pytest.mark.parametrize("dropout_p", [0.1, 0.5, 0.85])
def test_dropout_mask_is_bit_exact(dropout_p):
    batch, seqlen_q, seqlen_kv, heads_q, heads_kv = 2, 5, 11, 4, 2
    rng = np.random.default_rng(13)
    q = rng.standard_normal((batch, seqlen_q, heads_q, 4))
    k = rng.standard_normal((batch, seqlen_kv, heads_kv, 4))
    v = np.broadcast_to(np.eye(seqlen_kv)[None, :, None, :], (batch, seqlen_kv, heads_kv, seqlen_kv)).copy()
    out, _ = run(dict(q=q, k=k, v=v), dropout_p=dropout_p, dropout_seed=SEED)
    kept = _keep_mask_from_outputs(out.transpose(0, 2, 1, 3))            # [b, h, i, j]
    expected = np.stack([brute_force.keep_mask(SEED, b, heads_q, seqlen_q, seqlen_kv, dropout_p)
                         for b in range(batch)])
    np.testing.assert_array_equal(kept, expected)
    assert 0 < expected.sum() < expected.size
    vectorised = np.stack([dropout_keep_mask(SEED, b, np.arange(heads_q)[:, None, None],
                                             np.arange(seqlen_q)[None, :, None],
                                             np.arange(seqlen_kv)[None, None, :], dropout_p)
                           for b in range(batch)])
    np.testing.assert_array_equal(vectorised, expected)
    # the kept values are scaled by 1 / (1 - p)
    no_drop, _ = run(dict(q=q, k=k, v=v))
    np.testing.assert_allclose(out, np.where(out != 0, no_drop / (1 - dropout_p), 0.0), **F64_TOLERANCE)


def test_dropout_mask_uses_positions_within_each_varlen_sequence():
    lengths_q, lengths_kv, heads = [2, 3], [6, 5], 2
    rng = np.random.default_rng(14)
    q = rng.standard_normal((sum(lengths_q), heads, 4))
    k = rng.standard_normal((sum(lengths_kv), heads, 4))
    v = np.zeros((sum(lengths_kv), heads, 6))
    start = 0
    for length in lengths_kv:                      # v row j of each sequence = e_j
        v[start:start + length, :, :length] = np.eye(length)[:, None, :]
        start += length
    cu_q = np.array([0, 2, 5], np.int32)
    cu_kv = np.array([0, 6, 11], np.int32)
    out, _ = run(dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv, layout="thd"),
                 dropout_p=0.5, dropout_seed=SEED)
    for b in range(2):
        kept = out[cu_q[b]:cu_q[b + 1], :, :lengths_kv[b]].transpose(1, 0, 2) != 0
        expected = brute_force.keep_mask(SEED, b, heads, lengths_q[b], lengths_kv[b], 0.5)
        np.testing.assert_array_equal(kept, expected)


def test_dropout_seed_changes_the_result_and_is_reproducible():
    args = without(base_problem(seed=15), *EXTRAS)
    first, lse_first = run(args, dropout_p=0.4, dropout_seed=1)
    again, lse_again = run(args, dropout_p=0.4, dropout_seed=1)
    other, lse_other = run(args, dropout_p=0.4, dropout_seed=2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(lse_first, lse_other)     # dropout leaves lse alone
    np.testing.assert_array_equal(lse_first, run(args)[1])


# -- element types ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, out_dtype, epsilon", [
    ("f32", "f32", 2.0**-23), ("f16", "f16", 2.0**-10), ("bf16", "bf16", 2.0**-7),
    ("e4m3", "bf16", 2.0**-7), ("e5m2", "bf16", 2.0**-7)])
def test_input_dtypes(dtype, out_dtype, epsilon):
    """Inputs are exact in float64, so the output is the brute-force value rounded once to the
    output dtype (within one unit of its precision); lse is float32."""
    args = make_problem(np.random.default_rng(16), batch=2, seqlen_q=5, seqlen_kv=7, heads_q=4, heads_kv=2,
                        dtype=dtype, alibi="heads", sink_logits=True)
    options = dict(causal=True, softcap=2.0, dropout_p=0.1, dropout_seed=SEED)
    out, lse = run(args, **options)
    assert out.dtype == np.dtype(DTYPES[out_dtype])
    assert lse.dtype == np.float32
    want_out, want_lse = brute_force.attention(**args, **options)
    error = np.abs(out.astype(np.float64) - want_out)
    assert (error <= epsilon * np.abs(want_out) + 1e-30).all(), error.max()
    np.testing.assert_allclose(lse, want_lse, rtol=2e-7, atol=1e-7)


def test_plan_select_run_with_f32_inputs():
    args = without(base_problem(seed=17, dtype="f32"), "layout")
    desc = attnplan.AttentionDescriptor(batch=2, seqlen_q=5, seqlen_kv=7, heads_q=4, heads_kv=2, head_dim=8,
                                        dtype="f32", causal=True, alibi=True, sink_logits=True, return_lse=True)
    plan = attnplan.Plan.select(desc, "cpu")
    assert plan.backend.name == "reference"
    out, lse = plan.run(**args)
    want_out, want_lse = brute_force.attention(**args, causal=True)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    np.testing.assert_allclose(out, want_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-6, atol=1e-6)


def test_out_and_lse_buffers_are_filled_in_place():
    args = without(base_problem(seed=18), *EXTRAS, "layout")
    desc = attnplan.describe(**args, causal=True)
    plan = attnplan.Plan.select(desc, "cpu")
    out = np.full((2, 5, 4, 8), np.nan)
    lse = np.full((2, 4, 5), np.nan)
    result = plan.run(**args, out=out, lse=lse)
    assert result.out is out and result.lse is lse
    want_out, want_lse = brute_force.attention(**args, causal=True)
    np.testing.assert_allclose(out, want_out, **F64_TOLERANCE)
    np.testing.assert_allclose(lse, want_lse, **F64_TOLERANCE)
