"""Kernel parameter blocks made once per argument signature: `ParamBlock.fill` gives the same bytes
as packing every field afresh, and per-signature caches behave."""

from __future__ import annotations

import numpy as np
import pytest

from attnplan import AttentionDescriptor, PagedKV
from attnplan.arguments import bind_arguments, lse_shape
from attnplan.backends.nvrtc import launch_params, params
from attnplan.backends.nvrtc.sm80.runners import FORWARD_PER_CALL, workspace_strides
from attnplan.device import as_device
from attnplan.interop import empty, wrap_storage
from attnplan.layout_cache import LayoutCache
from attnplan.problems import random_inputs

FEATURES = [dict(), dict(layout="thd"), dict(layout="bhsd", alibi=True), dict(paged=PagedKV(16, 8), causal=True),
            dict(sink_logits=True, dropout_p=0.1, window=(5, 3), heads_kv=2), dict(layout="thd", sink_logits=True)]


def _bound(direction: str, **features):
    desc = AttentionDescriptor(**{**dict(batch=3, seqlen_q=40, seqlen_kv=56, heads_q=4, heads_kv=4, head_dim=64,
                                         dtype="f16", direction=direction, return_lse=True), **features})
    args = random_inputs(desc, as_device("cpu"), seed=1)
    if direction == "backward":
        args["out"] = np.zeros(args["q"].shape, np.float16)
        args["lse"] = np.zeros(lse_shape(desc, args["q"].shape[0]), np.float32)
    return desc, bind_arguments(desc, args)


@pytest.mark.parametrize("features", FEATURES, ids=lambda f: "-".join(f) or "plain")
def test_forward_block_fill_equals_packing_every_field(features):
    desc, b = _bound("forward", **features)
    out = wrap_storage(empty(b.q.shape, "f16", b.q), "f16")
    lse = wrap_storage(empty(lse_shape(desc, b.q.shape[0]), "f32", b.q), "f32")
    layout = launch_params.layout_values(desc, b, out, lse)
    pointers = launch_params.pointer_values(b, out, lse)
    assert not set(layout) & set(pointers)
    struct = params.STANDARD["forward"]
    block = params.ParamBlock(struct, layout, FORWARD_PER_CALL)
    assert bytes(block.fill(pointers)) == bytes(struct.pack({**layout, **pointers}))
    moved = dict(pointers, q=pointers["q"] + 4096)           # a second call with other buffers
    assert bytes(block.fill(moved)) == bytes(struct.pack({**layout, **moved}))


@pytest.mark.parametrize("features", [f for f in FEATURES if "paged" not in f], ids=lambda f: "-".join(f) or "plain")
def test_backward_block_fill_equals_packing_every_field(features):
    desc, b = _bound("backward", **features)
    grads = {name: wrap_storage(empty(t.shape, "f16", b.q), "f16") for name, t in (("dq", b.q), ("dk", b.k), ("dv", b.v))}
    grads["dsink_logits"] = wrap_storage(empty((desc.heads_q,), "f32", b.q), "f32") if desc.sink_logits else None
    total_q = b.q.shape[0] if desc.layout == "thd" else desc.batch * desc.seqlen_q
    layout = launch_params.layout_values(desc, b, b.out, b.lse)
    layout.update(launch_params.backward_layout_values(desc, b, grads))
    layout.update(workspace_strides(desc, total_q))
    pointers = launch_params.pointer_values(b, b.out, b.lse)
    pointers.update(launch_params.backward_pointer_values(b, grads))
    pointers.update(delta=4096, dq_accum=8192)
    struct = params.STANDARD["backward"]
    block = params.ParamBlock(struct, layout, tuple(pointers))
    assert bytes(block.fill(pointers)) == bytes(struct.pack({**layout, **pointers}))


def test_block_rejects_fields_it_does_not_know():
    with pytest.raises(KeyError, match="unknown"):
        params.ParamBlock(params.STANDARD["forward"], {}, ("q", "not_a_field"))
    block = params.ParamBlock(params.STANDARD["forward"], {}, ("q",))
    with pytest.raises(KeyError, match="not per-call"):
        block.fill({"k": 1})


def test_layout_cache_keeps_values_per_signature_and_never_caches_none_or_failures():
    cache, made = LayoutCache(limit=2), []

    def make(value):
        made.append(value)
        return value

    assert cache.get("a", lambda: make(1)) == 1 and cache.get("a", lambda: make(2)) == 1
    assert cache.get(None, lambda: make(3)) == 3 and cache.get(None, lambda: make(4)) == 4
    with pytest.raises(ValueError):
        cache.get("b", lambda: (_ for _ in ()).throw(ValueError("bad layout")))
    assert cache.get("b", lambda: make(5)) == 5
    cache.get("c", lambda: make(6))                          # full: cleared, then holds "c"
    assert len(cache) == 1 and made == [1, 3, 4, 5, 6]
    assert cache.get("c", make, 7) == 6 and cache.get("d", make, 8) == 8 and made[-1] == 8   # make(*args)
    checks = []
    cache.get("e", lambda: checks.append(1))                 # a check that passed (None) is kept too
    cache.get("e", lambda: checks.append(1))
    assert checks == [1]
