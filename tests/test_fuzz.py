"""The fuzz test (issue 15): random valid descriptors -- 16-bit and f32 dtypes, head dims odd and
even, seqlens including 0, 1 and primes, every mask feature and their combinations, GQA / MQA,
varlen with empty sequences, paged KV with random block tables -- run on every backend that accepts
them on this machine, each against the independent brute-force definition (tests/brute_force.py).

On the CPU that is the reference backend; `-m gpu` runs the same draws on the GPU's backends (each
nvrtc generation, cuDNN), where a backend's decline is a skip of that backend, never a pass.  A
failure names its seed: `FUZZ_SEED=<seed> python -m pytest tests/test_fuzz.py` replays it (hypothesis
prints the falsifying draw too)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from attnplan import AttentionDescriptor, PagedKV, Plan, explain
from attnplan.accuracy import host_f64
from attnplan.device import default_device
from attnplan.dtypes import HOST_DTYPES

import brute_force

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CPU_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
GPU_EXAMPLES = int(os.environ.get("FUZZ_GPU_EXAMPLES", "500"))
# Output tolerance, relative to the largest |reference| (at least 1): a few units of the output
# type's rounding plus the input rounding's effect on the softmax.
EPS = {"bf16": 2.0**-6, "f16": 2.0**-9, "f32": 1e-5}
SEQLENS = (0, 1, 2, 3, 5, 7, 13, 17, 31, 64, 113)


def build_problem(pick, seed: int, dtypes=("bf16", "f16", "f32")):
    """(descriptor, host arguments, seed) for one random forward problem: `pick(options)` chooses
    one of a sequence (a hypothesis draw, or a seeded RNG's choice in tests/gpu/fuzz_record.py),
    `seed` fixes the arrays' values."""
    rng = np.random.default_rng(seed)
    dtype = pick(dtypes)
    heads_kv = pick([1, 2])
    heads_q = heads_kv * pick([1, 2, 4])
    head_dim = pick([8, 16, 24, 40, 64, 72, 96, 128])
    head_dim_v = pick([head_dim, head_dim, 16, 64])
    batch = pick([1, 2, 3])
    seqlen_q, seqlen_kv = pick(SEQLENS), pick(SEQLENS)
    kv_form = pick(["dense", "varlen", "paged"])
    layout = "thd" if kv_form == "varlen" or (kv_form == "paged" and pick([False, True])) else "bshd"
    causal = pick([False, True])
    left = pick([-1, -1, 0, 3, 16])
    right = 0 if causal and left >= 0 else (pick([-1, 0, 5]) if left >= 0 else -1)
    if causal and left < 0:
        right = -1
    fields = dict(batch=batch, seqlen_q=max(seqlen_q, 1), seqlen_kv=max(seqlen_kv, 1), heads_q=heads_q,
                  heads_kv=heads_kv, head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype, layout=layout,
                  causal=causal, causal_alignment=pick(["bottom_right", "top_left"]),
                  window=(left, right), sink_tokens=pick([0, 2]) if left >= 0 else 0,
                  sink_logits=pick([False, True]), alibi=pick([False, True]),
                  softcap=pick([0.0, 0.0, 5.0]), return_lse=True)
    if layout == "bshd" and kv_form == "dense":
        fields.update(seqlen_q=seqlen_q, seqlen_kv=seqlen_kv)        # dense problems may be empty
    page_size = pick([1, 4, 16, 64]) if kv_form == "paged" else None
    if page_size:
        fields["paged"] = PagedKV(page_size, -(-fields["seqlen_kv"] // page_size))
    desc = AttentionDescriptor(**fields)

    def tensor(shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(HOST_DTYPES[dtype])

    args = {}
    # varlen lengths include empty sequences (the descriptor's maxima are bounds, not attained)
    q_lengths = rng.integers(0, desc.seqlen_q + 1, batch) if layout == "thd" else np.full(batch, desc.seqlen_q)
    kv_lengths = rng.integers(0, desc.seqlen_kv + 1, batch) if kv_form != "dense" else np.full(batch, desc.seqlen_kv)
    if layout == "thd":
        args["cu_seqlens_q"] = np.concatenate([[0], np.cumsum(q_lengths)]).astype(np.int32)
        q_shape = (int(q_lengths.sum()), heads_q)
    else:
        q_shape = (batch, desc.seqlen_q, heads_q)
    if page_size:
        pages = desc.paged.max_pages_per_seq
        args["block_table"] = rng.permutation(batch * pages).astype(np.int32).reshape(batch, pages)
        args["seqlens_kv"] = kv_lengths.astype(np.int32)
        kv_shape = (batch * pages, page_size, heads_kv)
    elif kv_form == "varlen":
        args["cu_seqlens_kv"] = np.concatenate([[0], np.cumsum(kv_lengths)]).astype(np.int32)
        kv_shape = (int(kv_lengths.sum()), heads_kv)
    else:
        kv_shape = (batch, desc.seqlen_kv, heads_kv)
    args["q"], args["k"], args["v"] = tensor(q_shape + (head_dim,)), tensor(kv_shape + (head_dim,)), \
        tensor(kv_shape + (head_dim_v,))
    if desc.alibi:
        args["alibi_slopes"] = rng.uniform(0.0, 1.0, heads_q).astype(np.float32)
    if desc.sink_logits:
        args["sink_logits"] = rng.uniform(-2.0, 2.0, heads_q).astype(np.float32)
    return desc, args, seed


@st.composite
def problems(draw, dtypes=("bf16", "f16", "f32")):
    """The hypothesis strategy of `build_problem` (shrinks a failure to a small draw)."""
    seed = draw(st.integers(0, 2**32 - 1))
    return build_problem(lambda options: draw(st.sampled_from(list(options))), seed, dtypes)


def brute(desc, args):
    options = dict(causal=desc.causal, causal_alignment=desc.causal_alignment, window=desc.window,
                   sink_tokens=desc.sink_tokens, softcap=desc.softcap, scale=desc.scale, layout=desc.layout)
    for name in ("sink_logits", "alibi_slopes", "cu_seqlens_q", "cu_seqlens_kv", "block_table", "seqlens_kv"):
        if name in args:
            options[name] = args[name]
    if desc.paged is not None and desc.layout == "thd":
        options["layout"] = "thd"
    return brute_force.attention(*(host_f64(args[n]) for n in ("q", "k", "v")), **options)


def check(desc, args, seed, device) -> list[str]:
    """Run every backend that accepts `desc` on `device`; the names of those that ran (AssertionError
    naming the backend and the seed for one that is wrong)."""
    exact = brute(desc, args)
    ran = []
    for name in accepting_backends(desc, device):
        check_backend(name, desc, args, seed, device, exact)
        ran.append(name)
    return ran


def accepting_backends(desc, device) -> list[str]:
    """The backends that accept `desc` on `device`, in the planner's ranking."""
    return [name for name in explain(desc, device).ranking
            if explain(desc, device, prefer=name).of(name).accepted]


def check_backend(name, desc, args, seed, device, exact) -> None:
    """One backend's run of the draw against the brute-force (out, lse); AssertionError naming the
    backend, the seed and the descriptor where it is off."""
    exact_out, exact_lse = exact
    scale = max(1.0, float(np.abs(exact_out).max(initial=0.0)))
    inputs = args if device.kind == "cpu" else _to_device(args)
    result = Plan.select(desc, device, prefer=name, restrict=True).run(**inputs)
    out, lse = host_f64(result.out), host_f64(result.lse)
    tolerance = 2 * EPS[desc.dtype] * scale + 1e-6
    where = f"backend {name}, FUZZ_SEED={seed}, {desc!r}"
    np.testing.assert_allclose(out, exact_out, rtol=0, atol=tolerance, err_msg=where)
    np.testing.assert_allclose(lse, exact_lse, rtol=0, atol=max(tolerance, 1e-4) * 4, err_msg=where)


def _to_device(args):
    from attnplan.problems import _to_device as to_device
    import cupy
    return {name: to_device(value, cupy) for name, value in args.items()}


def _replay():
    seed = os.environ.get("FUZZ_SEED")
    return None if seed is None else int(seed)


@settings(max_examples=CPU_EXAMPLES, **SETTINGS)
@given(problems())
def test_every_backend_on_this_machine_matches_the_brute_force_definition(problem):
    desc, args, seed = problem
    if _replay() is not None and seed != _replay():
        return
    ran = check(desc, args, seed, default_device() if default_device().kind == "cpu" else _cpu())
    assert "reference" in ran, (ran, desc)      # the reference takes every valid descriptor


def _cpu():
    from attnplan.device import Device
    return Device.cpu()


@pytest.mark.gpu
@settings(max_examples=GPU_EXAMPLES, **SETTINGS)
@given(problems(dtypes=("bf16", "f16")))
def test_every_gpu_backend_matches_the_brute_force_definition(problem):
    device = default_device()
    if device.kind != "cuda":
        pytest.skip("needs a CUDA GPU")
    desc, args, seed = problem
    check(desc, args, seed, device)
