"""The cuDNN backend without a GPU (or without cuDNN): it is registered, `explain` gives it a
verdict with a clear reason, nothing crashes; and the mapping of attnplan's masks onto cuDNN's
diagonal band is exact (checked against the semantics' visibility rule)."""

import itertools

import numpy as np
import pytest

from attnplan import AttentionDescriptor, NoPlanError, PagedKV, Plan, explain, registry
from attnplan.backends.cudnn import CudnnBackend
from attnplan.backends.cudnn import library
from attnplan.backends.cudnn.mapping import (canonical_geometry, cudnn_layout, mask_spec, semantic_reasons,
                                             stats_layout)
from attnplan.device import Device
from attnplan.masking import visible


def _desc(**fields) -> AttentionDescriptor:
    base = dict(batch=2, seqlen_q=64, seqlen_kv=96, heads_q=4, heads_kv=2, head_dim=64, dtype="bf16")
    base.update(fields)
    return AttentionDescriptor(**base)


def _cudnn(verdicts):
    return next(v for v in verdicts if v.backend == "cudnn")


def test_registered_between_nvrtc_and_reference():
    names = [b.name for b in registry.backends()]
    assert "cudnn" in names and names.index("cudnn") < names.index("reference")
    assert isinstance(registry.get("cudnn"), CudnnBackend)


def test_explain_on_the_cpu_gives_a_cudnn_verdict():
    verdict = _cudnn(explain(_desc(causal=True), device="cpu"))
    assert not verdict.accepted and verdict.reasons and "cuda" in verdict.reasons[0]


def test_explain_for_a_described_gpu_says_why_without_crashing():
    verdict = _cudnn(explain(_desc(causal=True), device="sm_90"))
    if library.problem() is None:      # cuDNN importable here, but no GPU to build a graph on
        assert not verdict.accepted and "described" in verdict.reasons[0]
    else:
        assert not verdict.accepted and verdict.reasons[0] == library.problem()
        assert "cuDNN" in verdict.reasons[0]
    assert str(explain(_desc(), device="sm_90"))       # the table renders


def test_old_gpus_are_rejected_by_arch():
    verdict = _cudnn(explain(_desc(), device="sm_75"))
    assert not verdict.accepted and "sm_80" in verdict.reasons[0]


def test_select_restricted_to_cudnn_raises_with_the_reason():
    with pytest.raises(NoPlanError, match="cudnn"):
        Plan.select(_desc(), device="sm_90", prefer="cudnn", restrict=True)


@pytest.mark.parametrize("fields, words", [
    (dict(alibi=True, causal=True), "ALiBi"),
    (dict(softcap=5.0), "softcap"),
    (dict(causal=True, window=(8, 0), sink_tokens=2), "sink tokens"),
])
def test_semantic_mismatches_are_explained_everywhere(fields, words):
    desc = _desc(**fields)
    assert any(words in r for r in semantic_reasons(desc))
    verdict = _cudnn(explain(desc, device="sm_90"))
    assert not verdict.accepted and any(words in r for r in verdict.reasons)


def test_library_versions_and_info_do_not_crash():
    versions = CudnnBackend().library_versions()
    assert isinstance(versions, dict)
    assert CudnnBackend().availability(_desc(), Device.cpu())     # called directly (attnplan info)


def test_f32_is_a_capability_reason():
    verdict = _cudnn(explain(_desc(dtype="f32"), device="sm_90"))
    assert not verdict.accepted and "dtype" in verdict.reasons[0]


# -- the mask mapping is exact -----------------------------------------------------------------

def _cudnn_visible(desc, seqlen_q, seqlen_kv):
    """cuDNN's diagonal band (its reference: triu/tril around the aligned diagonal)."""
    spec = mask_spec(desc)
    shift = seqlen_kv - seqlen_q if spec.alignment == "bottom_right" else 0
    i = np.arange(seqlen_q)[:, None]
    j = np.arange(seqlen_kv)[None, :]
    ok = np.ones((seqlen_q, seqlen_kv), dtype=bool)
    if spec.right_bound is not None:
        ok &= j <= i + shift + spec.right_bound
    if spec.left_bound is not None:
        assert spec.left_bound >= 1
        ok &= j > i + shift - spec.left_bound
    return ok


WINDOWS = [(-1, -1), (0, 0), (5, 0), (5, -1), (-1, 3), (7, 4), (0, 2)]


@pytest.mark.parametrize("causal, alignment, window, lengths", [
    (c, a, w, l) for c, a, w, l in itertools.product((False, True), ("bottom_right", "top_left"), WINDOWS,
                                                      ((17, 17), (9, 23), (23, 9)))
    if not (c and w[1] > 0)])
def test_band_matches_the_semantics(causal, alignment, window, lengths):
    sq, skv = lengths
    for layout, dropout_p in (("bshd", 0.0), ("bshd", 0.1), ("thd", 0.0)):
        desc = AttentionDescriptor(batch=1, seqlen_q=sq, seqlen_kv=skv, heads_q=1, heads_kv=1, head_dim=8,
                                   causal=causal, causal_alignment=alignment, window=window, layout=layout,
                                   dropout_p=dropout_p)
        # thd: per-sequence lengths may be shorter than the maxima
        for seq_q, seq_kv in {(sq, skv), (max(1, sq - 3), skv), (sq, max(1, skv - 5))}:
            if layout == "bshd" and (seq_q, seq_kv) != (sq, skv):
                continue
            ours = np.broadcast_to(visible(desc, np.arange(seq_q), np.arange(seq_kv), seq_q, seq_kv, np),
                                   (seq_q, seq_kv))
            assert np.array_equal(_cudnn_visible(desc, seq_q, seq_kv), ours), (desc, seq_q, seq_kv)


def test_equal_lengths_use_top_left_and_varlen_bottom_right():
    assert mask_spec(_desc(seqlen_kv=64, causal=True)).alignment == "top_left"
    assert mask_spec(_desc(causal=True)).alignment == "bottom_right"
    spec = mask_spec(_desc(layout="thd", seqlen_kv=64, causal=True, window=(10, 0)))
    assert spec.alignment == "bottom_right" and spec.padding and spec.left_bound == 11 and spec.right_bound == 0
    spec = mask_spec(_desc(window=(3, 4)))
    assert (spec.left_bound, spec.right_bound) == (4, 4)
    assert mask_spec(_desc()).left_bound is None and mask_spec(_desc()).right_bound is None
    # dropout: cuDNN has no bottom-right band with dropout, a shifted top-left band is the same
    spec = mask_spec(_desc(causal=True, dropout_p=0.1))
    assert (spec.alignment, spec.left_bound, spec.right_bound) == ("top_left", None, 32)
    # dense, bottom-right, more queries than keys: cuDNN needs per-sequence (constant) lengths
    assert mask_spec(_desc(seqlen_q=96, seqlen_kv=64, causal=True)).padding
    assert not mask_spec(_desc(seqlen_q=96, seqlen_kv=64, causal=True, causal_alignment="top_left")).padding


# -- layouts map to cuDNN's [b, h, s, d] --------------------------------------------------------

def test_layouts_map_to_bhsd_dims_and_strides():
    d = _desc()
    assert cudnn_layout(d, "q", (64 * 4 * 64, 4 * 64, 64, 1)) == ([2, 4, 64, 64], [64 * 4 * 64, 64, 4 * 64, 1])
    b = _desc(layout="bhsd")
    assert cudnn_layout(b, "k", (2 * 96 * 64, 96 * 64, 64, 1)) == ([2, 2, 96, 64], [2 * 96 * 64, 96 * 64, 64, 1])
    t = _desc(layout="thd")
    dims, strides = cudnn_layout(t, "q", (3 * 4 * 64, 64, 1))       # a packed-qkv view: token stride 3*h*d
    assert dims == [2, 4, 64, 64] and strides[1:] == [64, 3 * 4 * 64, 1]
    p = _desc(paged=PagedKV(16, 6))
    assert cudnn_layout(p, "v", (16 * 2 * 64, 2 * 64, 64, 1), num_pages=12) == \
        ([12, 2, 16, 64], [16 * 2 * 64, 64, 2 * 64, 1])
    assert stats_layout(d) == ([2, 4, 64, 1], [4 * 64, 64, 1, 1])


def test_canonical_geometry_is_hashable_and_complete():
    g = canonical_geometry(_desc(direction="backward"))
    assert {r for r, _ in g.strides} == {"q", "k", "v", "o", "do", "dq", "dk", "dv"}
    assert hash(g) == hash(canonical_geometry(_desc(direction="backward")))
    paged = canonical_geometry(_desc(paged=PagedKV(16, 6), return_lse=True))
    assert paged.num_pages == 12 and paged.table_stride == 6 and paged.stats


@pytest.mark.parametrize("view", [lambda a: a, lambda a: a[:, :, ::2], lambda a: a.transpose(0, 2, 1),
                                  lambda a: a[:1, 1:2], lambda a: a[:, :0], lambda a: a[:, :, :3]])
def test_lse_density_check_agrees_with_numpy(view):
    from attnplan.backends.cudnn.runner import is_c_contiguous
    a = view(np.zeros((2, 3, 4), np.float32))
    assert is_c_contiguous(a.shape, tuple(s // 4 for s in a.strides)) == a.flags.c_contiguous


def test_the_varlen_backward_with_sink_logits_is_refused_below_cudnn_9_26():
    from attnplan.backends.cudnn.mapping import version_reasons
    bad = _desc(layout="thd", direction="backward", sink_logits=True, causal=True)
    reasons = version_reasons(bad, 91900)
    assert len(reasons) == 1 and "cuDNN 9.19.0" in reasons[0] and ">= 9.26" in reasons[0] and "3249" in reasons[0]
    assert version_reasons(bad, 92600) == []                                  # fixed there
    assert version_reasons(bad.replace(direction="forward"), 91900) == []     # the forward is right
    assert version_reasons(bad.replace(sink_logits=False), 91900) == []
    assert version_reasons(bad.replace(layout="bshd"), 91900) == []           # dense is right


def test_paged_kv_is_no_longer_refused_for_its_empty_sequences():
    # GPU fuzz, H200, cuDNN 9.19.0: a sequence with seqlens_kv = 0 (or, varlen, no keys) got rows of
    # garbage instead of 0; the runner now writes those rows itself (tests below), so paged KV is mapped.
    from attnplan import PagedKV
    from attnplan.backends.cudnn.mapping import version_reasons
    paged = AttentionDescriptor(batch=1, seqlen_q=3, seqlen_kv=1, heads_q=1, heads_kv=1, head_dim=8, dtype="bf16",
                                paged=PagedKV(4, 1))
    assert version_reasons(paged, 91900) == [] and version_reasons(paged, 92600) == []
