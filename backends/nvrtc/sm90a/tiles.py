"""Tiles, warp roles and shared memory of the sm90a forward kernel (kernels/sm90a/fwd.cu).

The kernel is compiled with -D HEAD_DIM, HEAD_DIM_V (= HEAD_DIM), BLOCK_M, BLOCK_N, NUM_WARPS,
KV_STAGES (plus dtype and feature switches) and launched as

    grid  = (ceil(seqlen_q / block_m), heads_q, batch)
    block = num_warps * 32 threads: one producer warpgroup (TMA) + block_m / 64 consumer warpgroups
    dynamic shared memory = shared_memory_bytes(head_dim, block_m, block_n, stages)

Every number here restates kernels/sm90a/fwd_config.cuh / fwd_layout.cuh; the compile
static_asserts the shared-memory size (ATTN_EXPECTED_SMEM_BYTES) and the tests check the rest.
"""

from __future__ import annotations

import math

from attnplan.descriptor import AttentionDescriptor

from ..dispatch import TileConfig

SMEM_LIMIT = 227 * 1024             # dynamic shared memory a block may have on sm_90
WARPGROUP_THREADS = 128
CONSUMER_ROWS = 64                  # query rows per consumer warpgroup: one m64 wgmma
CONSUMERS = 2                       # consumer warpgroups (the setmaxnreg budgets assume two)
BLOCK_M = CONSUMERS * CONSUMER_ROWS
NUM_WARPS = 4 * (1 + CONSUMERS)     # the producer warpgroup too
THREADS = NUM_WARPS * 32
PRODUCER_REGISTERS, CONSUMER_REGISTERS = 24, 240    # setmaxnreg.dec / .inc (fwd_config.cuh)
LAUNCH_REGISTERS = 65536 // THREADS // 8 * 8        # what ptxas may give a thread at launch (168)
HEAD_DIMS = (64, 128, 256)
PANEL_COLUMNS = 64                  # a TMA box's columns: one 128-byte swizzle span of 16-bit elements
TILE_ALIGNMENT = 1024               # the swizzle atom: slack to align the base at run time
BARRIER_BYTES = 8
# Key-tile width by head dim: 128 keys where Q + two K/V stages fit (d <= 128: 160 KiB at d=128);
# at d=256 a 128-key tile needs 320 KiB with two stages, so 64 keys (193 KiB).  S (block_n / 2
# floats) and O (head_dim / 2) per consumer thread: 64 + 64 at d=128, 32 + 128 at d=256.
BLOCK_N = {64: 128, 128: 128, 256: 64}
STAGES = 2                          # K and V buffers each: the next tile loads during this one


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def shared_memory_bytes(head_dim: int, block_m: int, block_n: int, stages: int, dtype_bytes: int = 2) -> int:
    """Q (block_m rows), `stages` K and `stages` V tiles (block_n rows), the 2 + 4 * stages mbarriers
    (rounded to 128 bytes), and one swizzle atom of alignment slack (fwd_layout.cuh FwdLayout::kBytes)."""
    q = block_m * head_dim * dtype_bytes
    kv = 2 * stages * block_n * head_dim * dtype_bytes
    barriers = _round_up((2 + 4 * stages) * BARRIER_BYTES, 128)
    return q + kv + barriers + TILE_ALIGNMENT


def smem_limit(arch: int) -> int:
    return SMEM_LIMIT


def choose_tiles(desc: AttentionDescriptor, arch: int) -> TileConfig:
    """The forward tile for `desc` on sm_`arch`; ValueError (a planner reason) when there is none."""
    if desc.head_dim not in BLOCK_N:
        raise ValueError(f"head_dim={desc.head_dim}: the sm90a forward has tiles for head dims {list(HEAD_DIMS)}")
    tiles = TileConfig(BLOCK_M, BLOCK_N[desc.head_dim], NUM_WARPS)
    needed = shared_memory_bytes(desc.head_dim, tiles.block_m, tiles.block_n, STAGES)
    if needed > smem_limit(arch):
        raise ValueError(f"head_dim={desc.head_dim}: the sm90a tile needs {needed} bytes of shared memory, "
                         f"sm_{arch} allows {smem_limit(arch)}")
    return tiles


def choose_stages(desc: AttentionDescriptor, arch: int, tiles: TileConfig) -> int:
    return STAGES


def check_tiles(direction: str, tiles: TileConfig) -> None:
    """ValueError unless fwd.cu can be built with this (pinned) tile (its static_asserts)."""
    if direction != "forward":
        raise ValueError("the sm90a generation has no backward kernel")
    if tiles.block_m != BLOCK_M or tiles.num_warps != NUM_WARPS:
        raise ValueError(f"sm90a tile block_m={tiles.block_m}, num_warps={tiles.num_warps}: must be {BLOCK_M} "
                         f"and {NUM_WARPS} ({CONSUMERS} consumer warpgroups of {CONSUMER_ROWS} rows + a producer)")
    if tiles.block_n not in (64, 128):
        raise ValueError(f"sm90a tile block_n={tiles.block_n}: must be 64 or 128")


def grid(seqlen_q: int, heads_q: int, batch: int, block_m: int = BLOCK_M, persistent_ctas: int = 0
         ) -> tuple[int, int, int]:
    """One CTA per work tile, or with `persistent_ctas` (the SM count) a persistent grid of at most that
    many CTAs, each walking work tiles blockIdx.x, blockIdx.x + gridDim.x, ... (fwd.cu WorkSchedule)."""
    work = (math.ceil(seqlen_q / block_m), heads_q, batch)
    if persistent_ctas:
        return (max(1, min(work[0] * heads_q * batch, persistent_ctas)), 1, 1)
    return work
