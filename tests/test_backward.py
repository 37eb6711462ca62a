"""Reference gradients against central finite differences of loss = sum(out * dout), in float64."""

import numpy as np
import pytest

import attnplan

from problems import make_problem

STEP = 1e-5                         # central differences in f64: error ~ STEP**2 + 1e-16 / STEP
TOLERANCE = dict(rtol=1e-6, atol=1e-8)
SINK_STEP = 2.0**-10                # sink logits are f32: a step that f32 represents exactly
SINK_TOLERANCE = dict(rtol=1e-4, atol=1e-6)
SEED = 0xDEAD_BEEF_0BAD_CAFE


def _inputs(args):
    return {n: args[n] for n in ("q", "k", "v")}


def _options(args, options):
    return {**{n: a for n, a in args.items() if n not in ("q", "k", "v")}, **options}


def loss(args, options, dout) -> float:
    out = attnplan.attention(**args, **options)
    return float(np.sum(out * dout))


def finite_difference(args, options, dout, name, step):
    """d loss / d args[name], one element at a time."""
    base = args[name]
    grad = np.zeros(base.shape, dtype=np.float64)
    for index in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[index] += step
        minus[index] -= step
        actual_step = float(plus[index]) - float(minus[index])     # exact, even when base is f32
        grad[index] = (loss(dict(args, **{name: plus}), options, dout)
                       - loss(dict(args, **{name: minus}), options, dout)) / actual_step
    return grad


def check_gradients(args, **options):
    """Analytic (dq, dk, dv[, dsink]) vs finite differences; returns the analytic gradients."""
    out, lse = attnplan.attention(**args, return_lse=True, **options)
    dout = np.random.default_rng(99).standard_normal(out.shape)
    grads = attnplan.attention_backward(dout, args["q"], args["k"], args["v"], out, lse,
                                        **_options(args, options))
    names = ("q", "k", "v") + (("sink_logits",) if "sink_logits" in args else ())
    assert len(grads) == len(names)
    for name, analytic in zip(names, grads):
        assert analytic.shape == args[name].shape, name
        step, tolerance = (SINK_STEP, SINK_TOLERANCE) if name == "sink_logits" else (STEP, TOLERANCE)
        numeric = finite_difference(args, options, dout, name, step)
        assert np.abs(numeric).max() > 1e-3, f"d loss / d {name} is ~0: the case tests nothing"
        np.testing.assert_allclose(analytic, numeric, err_msg=f"gradient of {name}", **tolerance)
    return grads


def problem(seed=0, **overrides):
    kwargs = dict(batch=2, seqlen_q=4, seqlen_kv=5, heads_q=2, heads_kv=2, head_dim=4)
    kwargs.update(overrides)
    return make_problem(np.random.default_rng(seed), **kwargs)


def test_plain():
    check_gradients(problem(seqlen_q=7, seqlen_kv=9, head_dim=3, batch=1))


@pytest.mark.parametrize("alignment", ["bottom_right", "top_left"])
def test_causal(alignment):
    check_gradients(problem(1), causal=True, causal_alignment=alignment)


def test_window_with_sink_tokens():
    check_gradients(problem(2, seqlen_q=6, seqlen_kv=8), window=(1, 1), sink_tokens=2)


def test_softcap():
    check_gradients(problem(3), softcap=0.5, causal=True)


@pytest.mark.parametrize("alibi", ["heads", "batch_heads"])
def test_alibi(alibi):
    check_gradients(problem(4, alibi=alibi), causal=True)


def test_sink_logits():
    grads = check_gradients(problem(5, sink_logits=True), window=(2, 0))
    assert grads[3].dtype == np.float32


@pytest.mark.parametrize("heads_q, heads_kv", [(4, 2), (4, 1)])
def test_gqa(heads_q, heads_kv):
    check_gradients(problem(6, heads_q=heads_q, heads_kv=heads_kv, batch=1), causal=True)


def test_varlen():
    args = make_problem(np.random.default_rng(7), layout="thd", lengths_q=[3, 1, 2], lengths_kv=[4, 0, 5],
                        seqlen_q=3, seqlen_kv=5, heads_q=2, heads_kv=1, head_dim=3, sink_logits=True)
    dq, dk, dv, _ = check_gradients(args, causal=True)
    assert (dq[3] == 0).all(), "a query row with no visible key contributes no gradient"


def test_dropout_with_fixed_seed():
    check_gradients(problem(8, heads_q=4, heads_kv=2, batch=1, seqlen_q=5, seqlen_kv=6),
                    dropout_p=0.3, dropout_seed=SEED)


def test_bhsd_layout():
    check_gradients(problem(9, layout="bhsd", heads_q=4, heads_kv=2, batch=1), causal=True, window=(2, 0))


def test_head_dim_v_differs():
    check_gradients(problem(10, head_dim=3, head_dim_v=5, batch=1))


def test_everything_at_once():
    args = problem(11, batch=1, seqlen_q=6, seqlen_kv=7, heads_q=4, heads_kv=2, head_dim=3,
                   alibi="heads", sink_logits=True)
    check_gradients(args, causal=True, window=(2, 0), sink_tokens=1, softcap=0.8, dropout_p=0.2,
                    dropout_seed=SEED)


def test_rows_without_keys_contribute_nothing():
    """Bottom-right causal with more queries than keys: the first rows see nothing."""
    args = problem(12, seqlen_q=6, seqlen_kv=3, sink_logits=True)
    dq, dk, dv, dsink = check_gradients(args, causal=True)
    assert (dq[:, :3] == 0).all()
    # Only the first three rows exist: the same gradients of k, v as with them cut away.
    out, lse = attnplan.attention(**args, causal=True, return_lse=True)
    dout = np.random.default_rng(99).standard_normal(out.shape)
    cut = dict(args, q=args["q"][:, 3:].copy())
    cut_out, cut_lse = attnplan.attention(**cut, causal=True, return_lse=True)
    cut_grads = attnplan.attention_backward(dout[:, 3:].copy(), cut["q"], cut["k"], cut["v"], cut_out, cut_lse,
                                            causal=True, sink_logits=args["sink_logits"])
    np.testing.assert_allclose(dk, cut_grads[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv, cut_grads[2], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dsink, cut_grads[3], rtol=1e-6)


@pytest.mark.parametrize("dtype, epsilon", [("f32", 1e-5), ("bf16", 2.0**-6), ("f16", 2.0**-9)])
def test_low_precision_gradients_follow_f64(dtype, epsilon):
    """Gradients come back in the input dtype, close to the float64 gradients of the same values."""
    args = problem(13, dtype=dtype)
    exact = {n: args[n].astype(np.float64) for n in ("q", "k", "v")}
    out, lse = attnplan.attention(**args, causal=True, return_lse=True)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype)
    grads = attnplan.attention_backward(dout, args["q"], args["k"], args["v"], out, lse, causal=True)
    out64, lse64 = attnplan.attention(**exact, causal=True, return_lse=True)
    grads64 = attnplan.attention_backward(dout.astype(np.float64), exact["q"], exact["k"], exact["v"],
                                          out64, lse64, causal=True)
    for name, grad, grad64 in zip("qkv", grads, grads64):
        assert grad.dtype == args[name].dtype, name
        scale = np.abs(grad64).max()
        np.testing.assert_allclose(grad.astype(np.float64), grad64, atol=4 * epsilon * scale, rtol=0)
