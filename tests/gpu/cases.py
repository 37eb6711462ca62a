"""The GPU test sweep as data: the tests run it, and the kernel warm-up compiles it ahead."""

from __future__ import annotations

import itertools

from attnplan import AttentionDescriptor, PagedKV


def _desc(**fields) -> AttentionDescriptor:
    base = dict(batch=2, seqlen_q=113, seqlen_kv=113, heads_q=4, heads_kv=4, head_dim=128, dtype="bf16",
                return_lse=True)
    base.update(fields)
    return AttentionDescriptor(**base)


# Every mask feature (and GQA, head_dim_v, layout) on one base problem, for both directions.
FEATURE_BASE = dict(head_dim=64, seqlen_q=300, seqlen_kv=517)
FEATURES = {
    "top_left": dict(causal=True, causal_alignment="top_left"),
    "top_left_q_longer": dict(causal=True, causal_alignment="top_left", seqlen_q=517, seqlen_kv=300),
    "bottom_right_q_longer": dict(causal=True, seqlen_q=517, seqlen_kv=300),
    "window_causal": dict(causal=True, window=(64, 0)),
    "window_two_sided": dict(window=(32, 48)),
    "window_sinks": dict(causal=True, window=(40, 0), sink_tokens=5),
    "alibi": dict(causal=True, alibi=True),
    "softcap": dict(softcap=30.0 / 8.0),
    "sink_logits": dict(causal=True, window=(16, 0), sink_logits=True),
    "dropout": dict(dropout_p=0.17),
    "dropout_causal": dict(causal=True, dropout_p=0.3),
    "gqa4": dict(heads_q=8, heads_kv=2, causal=True),
    "mqa8": dict(heads_q=8, heads_kv=1),
    "dv_differs": dict(head_dim=192, head_dim_v=128, causal=True),
    "everything": dict(causal=True, window=(50, 0), sink_tokens=3, alibi=True, softcap=5.0,
                       sink_logits=True, dropout_p=0.1, heads_q=8, heads_kv=2),
    "bhsd": dict(layout="bhsd", causal=True),
}


def forward_cases() -> list[tuple[str, AttentionDescriptor]]:
    cases = []
    for dtype, head_dim, causal in itertools.product(("bf16", "f16"), (64, 128, 256, 72), (False, True)):
        cases.append((f"{dtype}-d{head_dim}-causal{int(causal)}", _desc(dtype=dtype, head_dim=head_dim, causal=causal)))
    for sq, skv in ((1, 1), (17, 17), (1, 1023), (113, 1023), (1023, 113), (1023, 1023), (4096, 4096)):
        for causal in (False, True):
            batch, heads = (1, 2) if max(sq, skv) >= 4096 else (2, 4)
            cases.append((f"len{sq}x{skv}-causal{int(causal)}",
                          _desc(seqlen_q=sq, seqlen_kv=skv, causal=causal, batch=batch, heads_q=heads, heads_kv=heads)))
    for name, extra in FEATURES.items():
        for head_dim in (64, 128):
            fields = {**FEATURE_BASE, "head_dim": head_dim, **extra}
            cases.append((f"{name}-d{fields['head_dim']}", _desc(**fields)))
    cases += [
        ("varlen", _desc(layout="thd", batch=5, seqlen_q=300, seqlen_kv=400)),
        ("varlen-causal-gqa", _desc(layout="thd", batch=5, seqlen_q=300, seqlen_kv=400, causal=True,
                                    heads_q=8, heads_kv=2)),
        ("varlen-window-f16", _desc(layout="thd", batch=4, seqlen_q=257, seqlen_kv=257, causal=True,
                                    window=(33, 0), dtype="f16", head_dim=64)),
        ("paged16", _desc(batch=3, seqlen_q=64, seqlen_kv=300, paged=PagedKV(16, 19), causal=True)),
        ("paged64-decode", _desc(batch=4, seqlen_q=1, seqlen_kv=1000, paged=PagedKV(64, 16), heads_q=8, heads_kv=2)),
        ("paged-varlen-chunked-prefill", _desc(layout="thd", batch=3, seqlen_q=100, seqlen_kv=700,
                                               paged=PagedKV(32, 22), causal=True, head_dim=64)),
    ]
    return cases


def backward_cases() -> list[tuple[str, AttentionDescriptor]]:
    """The forward sweep's features in the backward direction (no paged KV: no paged backward),
    plus deterministic=True cells."""
    def bwd(**fields) -> AttentionDescriptor:
        return _desc(direction="backward", return_lse=False, **fields)

    cases = []
    for dtype, head_dim, causal in itertools.product(("bf16", "f16"), (64, 128, 256, 72), (False, True)):
        cases.append((f"{dtype}-d{head_dim}-causal{int(causal)}", bwd(dtype=dtype, head_dim=head_dim, causal=causal)))
    for sq, skv in ((1, 1), (17, 17), (1, 1023), (113, 1023), (1023, 113), (1023, 1023)):
        for causal in (False, True):
            cases.append((f"len{sq}x{skv}-causal{int(causal)}", bwd(seqlen_q=sq, seqlen_kv=skv, causal=causal)))
    backward_features = {**FEATURES, "window_sinks_two_sided": dict(window=(40, 20), sink_tokens=70)}
    for name, extra in backward_features.items():
        for head_dim in (64, 128):
            fields = {**FEATURE_BASE, "head_dim": head_dim, **extra}
            cases.append((f"{name}-d{fields['head_dim']}", bwd(**fields)))
    cases += [
        ("dv_smaller-d256x64", bwd(head_dim=256, head_dim_v=64, seqlen_q=200, seqlen_kv=300)),
        ("dv_larger-d64x128", bwd(head_dim=64, head_dim_v=128, seqlen_q=200, seqlen_kv=300, causal=True)),
        ("d32", bwd(head_dim=32, seqlen_q=200, seqlen_kv=300)),
        ("d40-causal-f16", bwd(head_dim=40, seqlen_q=300, seqlen_kv=200, causal=True, dtype="f16")),
        ("d160-window", bwd(head_dim=160, seqlen_q=300, seqlen_kv=300, window=(70, 30))),
        ("varlen", bwd(layout="thd", batch=5, seqlen_q=300, seqlen_kv=400)),
        ("varlen-causal-gqa", bwd(layout="thd", batch=5, seqlen_q=300, seqlen_kv=400, causal=True,
                                  heads_q=8, heads_kv=2)),
        ("varlen-window-f16", bwd(layout="thd", batch=4, seqlen_q=257, seqlen_kv=257, causal=True,
                                  window=(33, 0), dtype="f16", head_dim=64)),
        ("varlen-dropout-sinklogits", bwd(layout="thd", batch=3, seqlen_q=200, seqlen_kv=150, causal=True,
                                          dropout_p=0.2, sink_logits=True, head_dim=64)),
    ]
    deterministic = {
        "det-d64": dict(head_dim=64),
        "det-d128-causal-gqa4": dict(head_dim=128, causal=True, heads_q=8, heads_kv=2, seqlen_q=300, seqlen_kv=517),
        "det-d256-f16": dict(head_dim=256, dtype="f16", causal=True),
        "det-d72-q_longer": dict(head_dim=72, causal=True, seqlen_q=517, seqlen_kv=300),
        "det-everything": dict(head_dim=64, causal=True, window=(50, 0), sink_tokens=3, alibi=True, softcap=5.0,
                               sink_logits=True, dropout_p=0.1, heads_q=8, heads_kv=2, seqlen_q=300, seqlen_kv=517),
        "det-varlen-mqa": dict(layout="thd", batch=5, seqlen_q=300, seqlen_kv=400, heads_q=8, heads_kv=1,
                               head_dim=128),
    }
    for name, extra in deterministic.items():
        cases.append((name, bwd(deterministic=True, **extra)))
    return cases


def deterministic_cases() -> list[tuple[str, AttentionDescriptor]]:
    return [(name, desc) for name, desc in backward_cases() if desc.deterministic]


def benchmark_cases() -> list[tuple[str, AttentionDescriptor]]:
    """Backward throughput cells (timed, not checked against the reference)."""
    cases = []
    for head_dim, causal in itertools.product((64, 128, 256), (False, True)):
        batch, heads = (2, 16) if head_dim <= 128 else (2, 8)
        desc = AttentionDescriptor(batch=batch, seqlen_q=4096, seqlen_kv=4096, heads_q=heads, heads_kv=heads,
                                   head_dim=head_dim, dtype="bf16", causal=causal, direction="backward")
        cases.append((f"bench-d{head_dim}-causal{int(causal)}", desc))
    for head_dim in (64, 128):
        desc = AttentionDescriptor(batch=2, seqlen_q=4096, seqlen_kv=4096, heads_q=16, heads_kv=16,
                                   head_dim=head_dim, dtype="bf16", direction="backward", deterministic=True)
        cases.append((f"bench-d{head_dim}-deterministic", desc))
    return cases


def pinned_backward_cases() -> list[tuple[str, AttentionDescriptor, dict]]:
    """Backward tile configs that sm_90 does not choose by itself (the smaller-shared-memory fallbacks
    of sm_86/sm_89, single-buffered variants), pinned so the H100 checks them too."""
    d = dict(seqlen_q=300, seqlen_kv=517, heads_q=8, heads_kv=2, causal=True)
    return [
        ("pin-d128-m64n64w4s1", _desc(direction="backward", return_lse=False, head_dim=128, **d),
         {"block_m": 64, "block_n": 64, "num_warps": 4, "stages": 1}),
        ("pin-d96-m64n128w8s1-dropout", _desc(direction="backward", return_lse=False, head_dim=96, dropout_p=0.2, **d),
         {"block_m": 64, "block_n": 128, "num_warps": 8, "stages": 1}),
        ("pin-d128-m32n64w4s2-window", _desc(direction="backward", return_lse=False, head_dim=128, window=(70, 0), **d),
         {"block_m": 32, "block_n": 64, "num_warps": 4, "stages": 2}),
        ("pin-d256-m32n32w4s1", _desc(direction="backward", return_lse=False, head_dim=256, **d),
         {"block_m": 32, "block_n": 32, "num_warps": 4, "stages": 1}),
        ("pin-d192-m32n32w4s2-softcap", _desc(direction="backward", return_lse=False, head_dim=192, softcap=4.0, **d),
         {"block_m": 32, "block_n": 32, "num_warps": 4, "stages": 2}),
        ("pin-det-d128-dq32x32w2", _desc(direction="backward", return_lse=False, head_dim=128, deterministic=True, **d),
         {"block_m": 64, "block_n": 128, "num_warps": 8, "stages": 1, "dq_block_m": 32, "dq_block_n": 32,
          "dq_num_warps": 2}),
    ]
