"""The GPU test sweep as data: the tests run it, and the kernel warm-up compiles it ahead."""

from __future__ import annotations

import itertools

from attnplan import AttentionDescriptor, PagedKV


def _desc(**fields) -> AttentionDescriptor:
    base = dict(batch=2, seqlen_q=113, seqlen_kv=113, heads_q=4, heads_kv=4, head_dim=128, dtype="bf16",
                return_lse=True)
    base.update(fields)
    return AttentionDescriptor(**base)


def forward_cases() -> list[tuple[str, AttentionDescriptor]]:
    cases = []
    for dtype, head_dim, causal in itertools.product(("bf16", "f16"), (64, 128, 256, 72), (False, True)):
        cases.append((f"{dtype}-d{head_dim}-causal{int(causal)}", _desc(dtype=dtype, head_dim=head_dim, causal=causal)))
    for sq, skv in ((1, 1), (17, 17), (1, 1023), (113, 1023), (1023, 113), (1023, 1023), (4096, 4096)):
        for causal in (False, True):
            batch, heads = (1, 2) if max(sq, skv) >= 4096 else (2, 4)
            cases.append((f"len{sq}x{skv}-causal{int(causal)}",
                          _desc(seqlen_q=sq, seqlen_kv=skv, causal=causal, batch=batch, heads_q=heads, heads_kv=heads)))
    d64 = dict(head_dim=64, seqlen_q=300, seqlen_kv=517)
    features = {
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
    for name, extra in features.items():
        for head_dim in (64, 128):
            fields = {**d64, "head_dim": head_dim, **extra}
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
