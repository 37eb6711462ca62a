"""The sm80 tile tables: every configuration they choose is one the kernels accept and that fits
the arch's shared memory; pinned configurations that break either rule are refused with the
numbers, before anything is compiled."""

from __future__ import annotations

import pytest

from attnplan import AttentionDescriptor
from attnplan.backends.nvrtc import sm80
from attnplan.backends.nvrtc.backend import NvrtcBackend
from attnplan.backends.nvrtc.sm80 import tiles as sm80_tiles
from attnplan.device import as_device

ARCHS = (80, 86, 89, 90)
HEAD_DIMS = [(d, d) for d in range(32, 257, 8)] + [(192, 128), (128, 64), (64, 128)]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_tiles_fit_and_double_buffer_k_where_it_fits(arch):
    for head_dim, head_dim_v in HEAD_DIMS:
        cfg = sm80_tiles.tile_config(head_dim, head_dim_v, arch)
        limit = sm80_tiles.MAX_DYNAMIC_SMEM[arch]
        assert cfg["smem_bytes"] == sm80_tiles.shared_memory_bytes(head_dim, head_dim_v, cfg["block_m"],
                                                                     cfg["block_n"], cfg["stages"])
        assert cfg["smem_bytes"] <= limit, (head_dim, head_dim_v, cfg)
        assert cfg["block_m"] % (cfg["num_warps"] * 16) == 0
        double = sm80_tiles.shared_memory_bytes(head_dim, head_dim_v, cfg["block_m"], cfg["block_n"], 2) <= limit
        assert cfg["stages"] == (2 if double else 1), (head_dim, head_dim_v, cfg)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_backward_tiles_fit_and_are_valid(arch, causal):
    for head_dim, head_dim_v in HEAD_DIMS:
        cfg = sm80_tiles.backward_tile_config(head_dim, head_dim_v, arch, causal)
        sm80_tiles.check_backward_tile(cfg["block_m"], cfg["block_n"], cfg["num_warps"])
        assert cfg["smem_bytes"] <= sm80_tiles.MAX_DYNAMIC_SMEM[arch], (head_dim, head_dim_v, cfg)


def test_backward_tile_rules():
    sm80_tiles.check_backward_tile(64, 128, 8)    # 32 keys per warp pair
    sm80_tiles.check_backward_tile(64, 64, 8)     # 16 keys per warp pair
    for bad in ((64, 128, 4), (64, 128, 7), (48, 128, 8), (64, 96, 8)):
        with pytest.raises(ValueError, match="backward tile"):
            sm80_tiles.check_backward_tile(*bad)


def test_shared_memory_formulas_match_the_kernels_layout():
    # d=128, 64x128 tile, two stages: K, V (128 rows) + 2 x (Q, dO) (64 rows) of 128 columns, P^T and
    # dS^T (128 x 64), + 2 stages x (lse, delta) x 64 floats.
    assert sm80_tiles.backward_shared_memory_bytes(128, 128, 64, 128, 2) == \
        ((128 + 2 * 64) * 256 + 2 * 128 * 64) * 2 + 2 * 2 * 64 * 4
    # d=64 forward, 128x128 tile, two K buffers: Q 128 x 64 + 2 K + 1 V of 128 x 64.
    assert sm80_tiles.shared_memory_bytes(64, 64, 128, 128, 2) == (128 + 3 * 128) * 64 * 2


@pytest.mark.parametrize("direction, config", [
    ("forward", {"block_m": 128, "block_n": 128, "num_warps": 4, "stages": 2}),
    ("backward", {"block_m": 128, "block_n": 128, "num_warps": 8, "stages": 2}),
])
def test_a_pinned_tile_too_big_for_the_arch_is_refused_before_compiling(direction, config, monkeypatch):
    from attnplan.backends.nvrtc import compiler

    def no_compile(*args, **kwargs):  # the refusal must come first
        raise AssertionError("compiled a kernel that cannot launch")
    monkeypatch.setattr(compiler, "compile_key", no_compile)
    desc = AttentionDescriptor(batch=1, seqlen_q=256, seqlen_kv=256, heads_q=4, heads_kv=4, head_dim=256,
                               dtype="bf16", direction=direction)
    with pytest.raises(ValueError, match=r"needs \d+ bytes of shared memory per block; sm_89 allows \d+"):
        NvrtcBackend(sm80.GENERATION).build(desc, as_device("sm_89"), config)


def test_a_pinned_backward_tile_the_kernel_cannot_run_is_refused():
    desc = AttentionDescriptor(batch=1, seqlen_q=256, seqlen_kv=256, heads_q=4, heads_kv=4, head_dim=64,
                               dtype="bf16", direction="backward")
    with pytest.raises(ValueError, match=r"block_n / \(num_warps / 2\) must be 16 or 32"):
        NvrtcBackend(sm80.GENERATION).dispatch_key(desc, as_device("sm_90"), {"block_m": 64, "block_n": 128, "num_warps": 4})
