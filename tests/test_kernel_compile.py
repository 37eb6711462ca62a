"""Every sm80-generation kernel specialization of the common cells compiles with NVRTC to a cubin for
sm_80, sm_89 and sm_90 -- the targets dispatch compiles it for (the generation runs on the device's
own arch; sm_90a is the Hopper generation's, tests/test_sm90a_*.py) -- on a machine with no GPU (NVRTC
comes from the pip wheel of the nvrtc/cuda extras).

The cells: f16/bf16 x head dims 64, 96, 128, 192, 256 x causal, each with no feature and with every
feature at once (window, sink tokens, sink logits, ALiBi, softcap, dropout, varlen), for every arch;
with paged KV for sm_90 (the arch the GPU tests run on), and every feature alone at head dim 128
for sm_90.  Forward and, where the backend has it, backward (no paged backward).  Compile time on a
2-core CI machine bounds the matrix: every code path and every tile shape is in it, not every
product of the two.  The disk cache (ATTNPLAN_CACHE_DIR) makes a second run nearly free.
"""

from __future__ import annotations

import itertools

import pytest

from attnplan import AttentionDescriptor, PagedKV

compiler = pytest.importorskip("attnplan.backends.nvrtc.compiler")
try:
    compiler.nvrtc_version()
except compiler.NvrtcUnavailable as exc:  # pragma: no cover - CI installs NVRTC
    pytest.skip(f"NVRTC unavailable: {exc}", allow_module_level=True)

from attnplan.backends.nvrtc.warmup import compile_all, keys_for  # noqa: E402

DTYPES = ("f16", "bf16")
HEAD_DIMS = (64, 96, 128, 192, 256)
EVERYTHING = dict(window=(128, 0), sink_tokens=4, sink_logits=True, alibi=True, softcap=30.0, dropout_p=0.1,
                  layout="thd")
EVERY_ARCH_VARIANTS = {"plain": {}, "everything": EVERYTHING}
DEVICE_ARCH_VARIANTS = {**EVERY_ARCH_VARIANTS, "paged": dict(paged=PagedKV(64, 4))}
SINGLE_FEATURES = {"window": dict(window=(128, 0)), "sinks": dict(window=(128, 0), sink_tokens=4),
                   "sink_logits": dict(sink_logits=True), "alibi": dict(alibi=True), "softcap": dict(softcap=30.0),
                   "two_sided_window": dict(window=(64, 64)), "dropout": dict(dropout_p=0.1),
                   "varlen": dict(layout="thd"), "paged": dict(paged=PagedKV(64, 4))}
SINGLE_FEATURE_HEAD_DIMS = (128,)
ARCHS = {"sm_80": 80, "sm_89": 89, "sm_90": 90}


def _descriptors(variants: dict, head_dims=HEAD_DIMS) -> list[AttentionDescriptor]:
    descs = []
    for dtype, head_dim, causal, direction, extra in itertools.product(
            DTYPES, head_dims, (False, True), ("forward", "backward"), variants.values()):
        if direction == "backward" and "paged" in extra:
            continue
        fields = dict(batch=2, seqlen_q=256, seqlen_kv=256, heads_q=4, heads_kv=2, head_dim=head_dim, dtype=dtype,
                      causal=causal, direction=direction, **extra)
        if fields.get("window"):   # causal bounds the right side; without it, look 32 keys ahead
            fields["window"] = (fields["window"][0], 0 if causal else max(fields["window"][1], 32))
        descs.append(AttentionDescriptor(**fields))
    return descs


def _keys(arch_name: str, variants: dict, head_dims=HEAD_DIMS):
    """The sm80 generation's keys (other generations have their own compile tests)."""
    keys = [k for k in keys_for(_descriptors(variants, head_dims), ARCHS[arch_name]) if k.generation == "sm80"]
    assert all(k.arch == arch_name for k in keys), {k.arch for k in keys}
    return keys


def test_common_cells_compile_for_every_arch():
    keys = [k for arch in ARCHS for k in _keys(arch, DEVICE_ARCH_VARIANTS if arch == "sm_90" else EVERY_ARCH_VARIANTS)]
    keys += _keys("sm_90", SINGLE_FEATURES, SINGLE_FEATURE_HEAD_DIMS)
    keys = list({k.name: k for k in keys}.values())
    directions = {k.direction for k in keys}
    assert "forward" in directions and len(keys) >= len(ARCHS) * len(DTYPES) * len(HEAD_DIMS) * 2 * 2
    assert {k.arch for k in keys} == set(ARCHS)
    failures = compile_all(keys, workers=None)
    assert failures == 0, f"{failures} of {len(keys)} kernels failed to compile (logs above)"


def test_compile_error_carries_the_log_and_the_key():
    from attnplan.errors import KernelCompileError
    key = _keys("sm_90", {"plain": {}})[0]
    with pytest.raises(KernelCompileError) as info:
        compiler.compile_source(compiler.source_for(key) + "\nthis is not C++;\n", key.name, compiler.options_for(key))
    message = str(info.value)
    assert key.name in message and "error" in message.lower()


def test_keys_for_takes_at_most_limit_descriptors_per_generation():
    descs = [AttentionDescriptor(batch=1, seqlen_q=64, seqlen_kv=64, heads_q=1, heads_kv=1, head_dim=d, dtype="bf16",
                                 causal=causal) for d in (64, 128) for causal in (False, True)]
    every = keys_for(descs, 90)
    first = keys_for(descs, 90, limit=1)
    per_generation = {}
    for key in first:
        per_generation[key.generation] = per_generation.get(key.generation, 0) + 1
    assert set(per_generation) == {k.generation for k in every} and set(per_generation.values()) == {1}
    assert {k.name for k in first} == {k.name for k in keys_for(descs[:1], 90)}
