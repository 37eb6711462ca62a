"""The sm90a forward's GPU ladder as data, simplest first, so that the first failing case says the
most (tests/gpu/test_sm90a_gpu.py runs them, tests/gpu/sm90a_ladder.sh stops at the first
failure).  Each case is (name, descriptor, input variant): "dense" arrays from random_inputs, or
"strided" q / k / v that are views of wider arrays (every other head), addressed by their strides, or
(varlen) "nan_neighbour": the last sequence has no query rows and NaN keys and values, which every
other sequence's last key tile runs into (TMA fills only past the tensor's end): they must not leak,
or (paged) "nan_pages": every cache row no sequence holds is NaN (a page's rows past its sequence's end)."""

from __future__ import annotations

import itertools

from attnplan import AttentionDescriptor, PagedKV

from cases import FEATURES as SHARED_FEATURES, _desc  # tests/gpu is on sys.path (conftest, the ladder)

HEAD_DIMS = (64, 128, 256)


# Mask and score features on one base problem (q shorter than kv, neither a multiple of a tile).
FEATURE_BASE = dict(seqlen_q=300, seqlen_kv=517)
# The GPU suite's feature cases this generation takes (cases.FEATURES, the same values), in ladder
# order, plus two-sided variants and its own everything-at-once case.
_OWN = {
    "window_sinks_two_sided": dict(window=(40, 20), sink_tokens=70),
    "alibi_two_sided": dict(alibi=True),
    "everything": dict(causal=True, window=(50, 0), sink_tokens=3, alibi=True, softcap=5.0, sink_logits=True,
                       heads_q=8, heads_kv=2),
    # everything but the softcap: at d=64 the three-consumer tile takes it (a softcap gets two consumers)
    "all_but_softcap": dict(causal=True, window=(50, 0), sink_tokens=3, alibi=True, sink_logits=True,
                            heads_q=8, heads_kv=2),
}
_ORDER = ("top_left", "top_left_q_longer", "bottom_right_q_longer", "window_causal", "window_two_sided",
          "window_sinks", "window_sinks_two_sided", "softcap", "alibi", "alibi_two_sided", "sink_logits", "gqa4",
          "mqa8", "all_but_softcap", "everything")
FEATURES = {name: _OWN[name] if name in _OWN else SHARED_FEATURES[name] for name in _ORDER}


def forward_cases() -> list[tuple[str, AttentionDescriptor, str]]:
    cases = [("bf16-d128", _desc(), "dense")]
    for dtype, head_dim, causal in itertools.product(("bf16", "f16"), HEAD_DIMS, (False, True)):
        cases.append((f"{dtype}-d{head_dim}-causal{int(causal)}", _desc(dtype=dtype, head_dim=head_dim, causal=causal),
                      "dense"))
    for sq, skv in ((1, 1), (17, 17), (1023, 1023), (4096, 4096), (1, 1023), (113, 1023), (1023, 113), (17, 300)):
        for causal in (False, True):
            batch, heads = (1, 2) if max(sq, skv) >= 4096 else (2, 4)
            cases.append((f"len{sq}x{skv}-causal{int(causal)}",
                          _desc(seqlen_q=sq, seqlen_kv=skv, causal=causal, batch=batch, heads_q=heads, heads_kv=heads),
                          "dense"))
    # head dim 192, and V narrower than Q and K (192 / 128): gated until these cases pass on a GPU
    # (backends/nvrtc/sm90a/verified.json names the head dims each rung was verified at)
    for dtype, head_dim_v, causal in itertools.product(("bf16", "f16"), (192, 128), (False, True)):
        cases.append((f"{dtype}-d192x{head_dim_v}-causal{int(causal)}",
                      _desc(dtype=dtype, head_dim=192, head_dim_v=head_dim_v, causal=causal), "dense"))
    # head dim 96: d=128's tiles with the head dim padded (TMA zero-fills the columns past 96)
    for dtype, causal in itertools.product(("bf16", "f16"), (False, True)):
        cases.append((f"{dtype}-d96-causal{int(causal)}", _desc(dtype=dtype, head_dim=96, causal=causal), "dense"))
    cases.append(("everything-d96", _desc(**{**FEATURE_BASE, "head_dim": 96, **FEATURES["everything"]}), "dense"))
    cases.append(("strided-d96-gqa4", _desc(**{**FEATURE_BASE, "head_dim": 96, "heads_q": 8, "heads_kv": 2}), "strided"))
    for head_dim_v in (192, 128):
        cases.append((f"everything-d192x{head_dim_v}", _desc(**{**FEATURE_BASE, "head_dim": 192, "head_dim_v": head_dim_v,
                                                              **FEATURES["everything"]}), "dense"))
        cases.append((f"len1023x113-d192x{head_dim_v}-causal1",
                      _desc(seqlen_q=1023, seqlen_kv=113, head_dim=192, head_dim_v=head_dim_v, causal=True), "dense"))
    for name, extra in FEATURES.items():
        for head_dim in (64, 128):
            cases.append((f"{name}-d{head_dim}", _desc(**{**FEATURE_BASE, "head_dim": head_dim, **extra}), "dense"))
    for head_dim in HEAD_DIMS:
        cases.append((f"everything-d{head_dim}-f16", _desc(**{**FEATURE_BASE, "head_dim": head_dim, "dtype": "f16",
                                                              **FEATURES["everything"]}), "dense"))
    cases += [
        ("len4096-d256-causal", _desc(seqlen_q=4096, seqlen_kv=4096, batch=1, heads_q=2, heads_kv=2, head_dim=256,
                                      causal=True), "dense"),
        ("len4096-d64-gqa8-window", _desc(seqlen_q=4096, seqlen_kv=4096, batch=1, heads_q=8, heads_kv=1, head_dim=64,
                                          causal=True, window=(700, 0)), "dense"),
        ("strided-d128-gqa4", _desc(**{**FEATURE_BASE, "heads_q": 8, "heads_kv": 2, "causal": True}), "strided"),
        ("strided-d64", _desc(**{**FEATURE_BASE, "head_dim": 64}), "strided"),
        # more work tiles (8 x 8 x 4 = 256) than a persistent grid has CTAs (132): each CTA takes several
        ("many-tiles-gqa4-causal", _desc(seqlen_q=1023, seqlen_kv=1100, batch=4, heads_q=8, heads_kv=2, causal=True),
         "dense"),
        ("many-tiles-d64", _desc(seqlen_q=1000, seqlen_kv=1000, batch=4, heads_q=8, heads_kv=8, head_dim=64), "dense"),
    ]
    # varlen (thd): gated until these pass on a GPU (verified.json "features"); last, so that a dense
    # failure shows first
    varlen = dict(layout="thd", batch=5, seqlen_q=300, seqlen_kv=400)
    for head_dim, head_dim_v in ((64, 64), (128, 128), (256, 256), (192, 128), (96, 96)):
        for causal in (False, True):
            cases.append((f"varlen-d{head_dim}x{head_dim_v}-causal{int(causal)}",
                          _desc(**varlen, head_dim=head_dim, head_dim_v=head_dim_v, causal=causal), "dense"))
    cases += [
        ("varlen-f16-gqa4-window", _desc(**varlen, dtype="f16", heads_q=8, heads_kv=2, causal=True, window=(33, 0)),
         "dense"),
        ("varlen-top-left-q-longer", _desc(layout="thd", batch=4, seqlen_q=517, seqlen_kv=300, causal=True,
                                           causal_alignment="top_left"), "dense"),
        ("varlen-everything", _desc(**{**varlen, **FEATURES["everything"]}), "dense"),
        ("varlen-everything-d64", _desc(**{**varlen, "head_dim": 64, **FEATURES["everything"]}), "dense"),
        ("varlen-nan-neighbour", _desc(**varlen, causal=True), "nan_neighbour"),
        ("varlen-nan-neighbour-d64", _desc(**varlen, head_dim=64), "nan_neighbour"),
        ("varlen-single-rows", _desc(layout="thd", batch=7, seqlen_q=17, seqlen_kv=17, causal=True), "dense"),
        ("varlen-many-tiles", _desc(layout="thd", batch=6, seqlen_q=1023, seqlen_kv=1100, heads_q=8, heads_kv=2,
                                    causal=True), "dense"),
    ]
    # bhsd (PyTorch's SDPA layout): the same kernels through maps of its strides; gated like varlen
    for head_dim, causal in ((64, True), (128, False), (128, True), (256, True), (96, False)):
        cases.append((f"bhsd-d{head_dim}-causal{int(causal)}",
                      _desc(layout="bhsd", seqlen_q=300, seqlen_kv=517, heads_q=8, heads_kv=2, head_dim=head_dim,
                            causal=causal), "dense"))
    cases.append(("bhsd-everything", _desc(**{**FEATURE_BASE, "layout": "bhsd", **FEATURES["everything"]}), "dense"))
    # paged KV (the TMA rungs): pages smaller than, equal to and larger than the key tile; gated like
    # varlen; last of all
    cases += [
        ("paged16-causal", _desc(batch=3, seqlen_q=64, seqlen_kv=300, paged=PagedKV(16, 19), causal=True), "dense"),
        ("paged64-decode-gqa4", _desc(batch=4, seqlen_q=1, seqlen_kv=1000, paged=PagedKV(64, 16), heads_q=8,
                                      heads_kv=2), "dense"),
        ("paged128-d64", _desc(batch=3, seqlen_q=200, seqlen_kv=700, paged=PagedKV(128, 6), head_dim=64,
                               causal=True), "dense"),
        ("paged256-d256", _desc(batch=2, seqlen_q=130, seqlen_kv=600, paged=PagedKV(256, 3), head_dim=256), "dense"),
        ("paged32-d192x128", _desc(batch=2, seqlen_q=100, seqlen_kv=333, paged=PagedKV(32, 11), head_dim=192,
                                   head_dim_v=128, causal=True), "dense"),
        ("paged-varlen-chunked-prefill", _desc(layout="thd", batch=3, seqlen_q=100, seqlen_kv=700,
                                               paged=PagedKV(32, 22), causal=True, head_dim=64), "dense"),
        ("paged64-d96-gqa4", _desc(batch=3, seqlen_q=150, seqlen_kv=500, paged=PagedKV(64, 8), head_dim=96,
                                   heads_q=8, heads_kv=2, causal=True), "nan_pages"),
        ("paged-everything", _desc(**{**FEATURE_BASE, "paged": PagedKV(64, 9), **FEATURES["everything"]}), "dense"),
        ("paged16-nan-pages", _desc(batch=3, seqlen_q=70, seqlen_kv=300, paged=PagedKV(16, 19), causal=True),
         "nan_pages"),
        ("paged256-nan-pages", _desc(batch=3, seqlen_q=70, seqlen_kv=300, paged=PagedKV(256, 2)), "nan_pages"),
    ]
    return cases


def memcheck_cases() -> list[tuple[str, AttentionDescriptor]]:
    """Small problems for compute-sanitizer memcheck: partial tiles at both ends, GQA, every feature."""
    return [("memcheck-d128-gqa4-causal", _desc(seqlen_q=130, seqlen_kv=200, heads_q=4, heads_kv=1, causal=True)),
            # three consumers (d=64's 192-row tile), the last query tile partial
            ("memcheck-d64-three-consumers", _desc(seqlen_q=200, seqlen_kv=300, head_dim=64, heads_q=4, heads_kv=2,
                                                   causal=True, window=(90, 0), sink_tokens=2, alibi=True)),
            ("memcheck-varlen-d128-gqa4", _desc(layout="thd", batch=4, seqlen_q=150, seqlen_kv=230, heads_q=4,
                                                heads_kv=1, causal=True)),
            ("memcheck-d96-varlen", _desc(layout="thd", batch=3, seqlen_q=150, seqlen_kv=200, head_dim=96, heads_q=4,
                                          heads_kv=2, causal=True)),
            ("memcheck-paged16-gqa2", _desc(batch=3, seqlen_q=40, seqlen_kv=150, paged=PagedKV(16, 10), heads_q=4,
                                            heads_kv=2, causal=True)),
            ("memcheck-bhsd-d64-gqa4", _desc(layout="bhsd", seqlen_q=130, seqlen_kv=200, head_dim=64, heads_q=4,
                                             heads_kv=1, causal=True)),
            ("memcheck-d256-everything", _desc(seqlen_q=70, seqlen_kv=150, head_dim=256, heads_q=4, heads_kv=2,
                                               **{k: v for k, v in FEATURES["everything"].items()
                                                  if k not in ("heads_q", "heads_kv")}))]
