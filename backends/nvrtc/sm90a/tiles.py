"""Tiles, warp roles and shared memory of the sm90a forward kernel (kernels/sm90a/fwd.cu).

The kernel is compiled with -D HEAD_DIM, HEAD_DIM_V, BLOCK_M, BLOCK_N, NUM_WARPS, KV_STAGES (plus
the rung, dtype and feature switches) and launched as

    grid  = (ceil(seqlen_q / block_m), heads_q, batch), or the persistent rung's (min(work tiles, SMs), 1, 1)
    block = num_warps(block_m, rung) * 32 threads: one producer warpgroup (TMA; none in rung "wgmma")
            + block_m / 64 consumer warpgroups
    dynamic shared memory = shared_memory_bytes(head_dim, block_m, block_n, stages, head_dim_v=...)

Every number here restates kernels/sm90a/fwd_config.cuh / fwd_layout.cuh; the compile
static_asserts the shared-memory size (ATTN_EXPECTED_SMEM_BYTES) and the tests check the rest.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from attnplan.descriptor import AttentionDescriptor

from ..dispatch import TileConfig
from ..launcher import GRID_YZ_MAX

SMEM_LIMIT = 227 * 1024             # dynamic shared memory a block may have on sm_90
WARPGROUP_THREADS = 128
CONSUMER_ROWS = 64                  # query rows per consumer warpgroup: one m64 wgmma
# setmaxnreg budgets (producer, consumer) by consumer warpgroups (fwd_config.cuh): 24 + 240 for two,
# 24 + 160 for three (192 query rows).  setmaxnreg only moves registers within the CTA's launch
# allocation (launch_registers x threads: 64512 with two consumers, 65536 with three), which the
# budgets must fit.  The persistent rung's producer (it also draws the work indices) keeps 40 (32 with three).
REGISTERS = {2: (24, 240), 3: (24, 160)}
PERSISTENT_REGISTERS = {2: (40, 232), 3: (32, 160)}
BLOCK_MS = tuple(c * CONSUMER_ROWS for c in REGISTERS)      # 128, 192
PERSISTENT_RUNGS = ("persistent", "pingpong_persistent")    # the rungs of a persistent grid
PINGPONG_RUNGS = ("pingpong", "pingpong_persistent")        # the rungs whose two consumers take turns
HEAD_DIMS = (64, 96, 128, 192, 256)
# (head_dim, head_dim_v) pairs with V narrower than Q and K: DeepSeek's 192 / 128.
HEAD_DIM_V_PAIRS = ((192, 128),)
PANEL_COLUMNS = 64                  # a TMA box's columns: one 128-byte swizzle span of 16-bit elements
TILE_ALIGNMENT = 1024               # the swizzle atom: slack to align the base at run time
BARRIER_BYTES = 8
WORK_SLOT_BYTES = 8                 # a persistent CTA's next work index (an int, padded)
# Key tiles: whole 16-key k-steps of O += P V and one wgmma N (S = Q K^T) of at most 256.
BLOCK_N_STEP, BLOCK_N_MIN, BLOCK_N_MAX = 16, 64, 256
# The tile (block_m, block_n) by (head_dim, head_dim_v), from the H200 tile sweep under rung "overlap" (the same
# rounds as cuDNN: bench/results/2026-12-02-h200-sm90a-tiles.json, docs/fa3-notes.md):
#   d=64:  192 x 128, three consumers: the softmax (exp-bound at d=64) of three warpgroups hides
#          under the others' GEMMs; +10-20% over 128 x 128 (506 vs 421 TFLOP/s at s=8k);
#   d=128: 128 x 176 (FlashAttention-3's non-causal tile): S 88 + P 44 + O 64 registers of the 240;
#          +5-8% at s >= 8k, the same at s=2k;
#   d=256: 128 x 80: Q 64 KiB + two K/V stages of 40 KiB each fit 227 KiB; +6-12% over 128 x 64.
TILES = {(64, 64): (192, 128), (128, 128): (128, 176), (256, 256): (128, 80),
         # not yet measured (written without a GPU; gated in verified.json until a GPU run verifies them):
         # 128 x 112 fits Q 48 KiB + two K/V stages of 42 KiB; S 56 + P 28 + O 96 registers
         (192, 192): (128, 112), (192, 128): (128, 128),
         # d=96 runs in d=128's tiles (the head dim padded to whole 64-column panels: padded_head_dim)
         (96, 96): (128, 176)}
# With two consumers (rung "pingpong" takes turns between two; a softcap's tanh needs more registers
# than three consumers' 160 leave at d=64): 128 x 160 at d=64, the best two-consumer tile there.
TWO_CONSUMER_TILES = {**TILES, (64, 64): (128, 160)}
# Rung "persistent" keeps more state live across work tiles: tiles that do not spill there (d=256
# with ALiBi spills even so and gets another rung: __init__.py spills).  d=128: 128 x 176 since the
# output leaves from registers (+3-4% over 128 x 128 in bench/results/2026-12-02-h200-sm90a-tiles-persistent-direct.json).
PERSISTENT_TILES = {(64, 64): (128, 128), (128, 128): (128, 176), (256, 256): (128, 64), (192, 192): (128, 64),
                    (192, 128): (128, 64)}
# Rung "pingpong_persistent": the turns keep a little more live, so 128 x 176 spills a register at d=128.
PERSISTENT_TILES[(96, 96)] = PERSISTENT_TILES[(128, 128)]
PINGPONG_PERSISTENT_TILES = {**PERSISTENT_TILES, (128, 128): (128, 128), (96, 96): (128, 128)}
STAGES = 2                          # K and V buffers each: the next tile loads during this one


def consumers(block_m: int) -> int:
    return block_m // CONSUMER_ROWS


def register_budgets(block_m: int, rung: str) -> tuple[int, int]:
    """The (producer, consumer) setmaxnreg counts of a kernel with this tile under this rung (rung
    "wgmma" has no producer and no setmaxnreg: (0, its launch count))."""
    if rung == "wgmma":
        return 0, launch_registers(block_m, rung)
    return (PERSISTENT_REGISTERS if rung in PERSISTENT_RUNGS else REGISTERS)[consumers(block_m)]


def num_warps(block_m: int, rung: str = "") -> int:
    """The producer warpgroup (but in rung "wgmma", which has none) and block_m / 64 consumer warpgroups."""
    return 4 * ((0 if rung == "wgmma" else 1) + consumers(block_m))


def launch_registers(block_m: int, rung: str = "") -> int:
    """What ptxas may give a thread at launch (one CTA of num_warps(block_m, rung) warps per SM; at
    most 255)."""
    return min(255, 65536 // (num_warps(block_m, rung) * 32)) // 8 * 8


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def padded_head_dim(head_dim: int) -> int:
    """The head dim as the tiles hold it: whole 64-column panels (96 -> 128; fwd_config.cuh kHeadDim)."""
    return _round_up(head_dim, PANEL_COLUMNS)


def shared_memory_bytes(head_dim: int, block_m: int, block_n: int, stages: int, dtype_bytes: int = 2,
                        head_dim_v: Optional[int] = None) -> int:
    """Q (block_m rows), `stages` K and `stages` V tiles (block_n rows; V head_dim_v wide), the 3 + 4 * stages mbarriers and
    the 8-byte work slot (rounded to 128 bytes), and one swizzle atom of alignment slack (fwd_layout.cuh
    FwdLayout::kBytes)."""
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    head_dim, head_dim_v = padded_head_dim(head_dim), padded_head_dim(head_dim_v)
    q = block_m * head_dim * dtype_bytes
    kv = stages * block_n * (head_dim + head_dim_v) * dtype_bytes
    barriers = _round_up((3 + 4 * stages) * BARRIER_BYTES + WORK_SLOT_BYTES, 128)
    return q + kv + barriers + TILE_ALIGNMENT


def smem_limit(arch: int) -> int:
    return SMEM_LIMIT


TILES_VARIABLE = "ATTNPLAN_SM90A_TILES"


def named_tiles(text: str, head_dim: int) -> Optional[tuple[int, int]]:
    """The (block_m, block_n) that $ATTNPLAN_SM90A_TILES names for `head_dim` (an A/B or a bisection,
    like $ATTNPLAN_SM90A_RUNG): comma-separated entries "BMxBN" (every head dim) or "D:BMxBN" (head
    dim D only; these win); None where it names none.  ValueError for an entry it cannot read."""
    every = only = None
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        dim, _, shape = entry.rpartition(":")
        m, _, n = shape.partition("x")
        if not (m.isdigit() and n.isdigit() and (not dim or dim.isdigit())):
            raise ValueError(f"{TILES_VARIABLE}={text!r}: entry {entry!r} is not BMxBN or D:BMxBN "
                             f"(for example 192x128 or 128:128x176)")
        if not dim:
            every = (int(m), int(n))
        elif int(dim) == head_dim:
            only = (int(m), int(n))
    return only or every


def choose_tiles(desc: AttentionDescriptor, arch: int, rung: str = "") -> TileConfig:
    """The forward tile for `desc` on sm_`arch` under `rung`: the one $ATTNPLAN_SM90A_TILES names, or
    the measured table's; ValueError (a planner reason) when there is none."""
    if desc.head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim={desc.head_dim}: the sm90a forward has tiles for head dims {list(HEAD_DIMS)}")
    pair = (desc.head_dim, desc.head_dim_v)
    if desc.head_dim_v != desc.head_dim and pair not in HEAD_DIM_V_PAIRS:
        raise ValueError(f"head_dim_v={desc.head_dim_v} with head_dim={desc.head_dim}: the sm90a forward takes "
                         f"head_dim_v == head_dim, or {' or '.join(f'{v} with {d}' for d, v in HEAD_DIM_V_PAIRS)}")
    if desc.paged is not None and rung == "wgmma":
        raise ValueError("rung 'wgmma' copies K and V by cp.async without page tables: paged KV needs a TMA rung")
    named = named_tiles(os.environ.get(TILES_VARIABLE, ""), desc.head_dim)
    if named:
        block_m, block_n = named
        source = f"{TILES_VARIABLE}: the d={desc.head_dim} tile {block_m}x{block_n}"
    else:
        if rung == "pingpong_persistent":
            table = PINGPONG_PERSISTENT_TILES
        elif rung == "persistent":
            table = PERSISTENT_TILES
        elif rung == "pingpong" or desc.softcap:
            table = TWO_CONSUMER_TILES
        else:
            table = TILES
        block_m, block_n = table[pair]
        source = f"head_dim={desc.head_dim}: the sm90a tile"
        if desc.paged is not None:
            block_n = paged_block_n(block_n, desc.paged.page_size)
    tiles = TileConfig(block_m, block_n, num_warps(block_m, rung))
    query_tiles = math.ceil(desc.seqlen_q / block_m)
    if query_tiles > GRID_YZ_MAX and rung not in PERSISTENT_RUNGS:
        raise ValueError(f"seqlen_q={desc.seqlen_q}: {query_tiles} query tiles of {block_m} rows, more than gridDim.y "
                         f"takes ({GRID_YZ_MAX})")
    if named:
        try:
            check_tiles(desc.direction, tiles)
            check_variant(tiles, STAGES, rung)
            if desc.paged is not None:
                check_paged_tile(tiles.block_n, desc.paged.page_size)
        except ValueError as exc:
            raise ValueError(f"{TILES_VARIABLE}={os.environ[TILES_VARIABLE]!r}: {exc}") from None
    needed = shared_memory_bytes(desc.head_dim, tiles.block_m, tiles.block_n, STAGES, head_dim_v=desc.head_dim_v)
    if needed > smem_limit(arch):
        raise ValueError(f"{source} needs {needed} bytes of shared memory, sm_{arch} allows {smem_limit(arch)}")
    return tiles


# Paged KV: TMA brings a page in boxes of min(page_size, block_n) rows, so a key tile must hold whole
# pages or lie within one (block_n a multiple or a divisor of the page size), and a box whole 8-row
# swizzle atoms (kernels/sm90a/fwd_mainloop.cuh load_paged_tile).
PAGE_ROW_MULTIPLE = 8


def pages_fill(block_n: int, page_size: int) -> bool:
    """Whether key tiles of `block_n` keys are whole pages or lie within one."""
    return block_n % page_size == 0 or page_size % block_n == 0


def paged_block_n(block_n: int, page_size: int) -> int:
    """The largest key tile of at most `block_n` keys (in BLOCK_N_STEP steps) that pages of
    `page_size` keys fill exactly; ValueError (a planner reason) when there is none."""
    if page_size % PAGE_ROW_MULTIPLE:
        raise ValueError(f"paged.page_size={page_size}: the sm90a forward loads pages by TMA in whole 8-row "
                         f"swizzle atoms: a multiple of {PAGE_ROW_MULTIPLE}")
    for n in range(block_n, BLOCK_N_MIN - 1, -BLOCK_N_STEP):
        if pages_fill(n, page_size):
            return n
    raise ValueError(f"paged.page_size={page_size}: no sm90a key tile of {BLOCK_N_MIN}..{block_n} keys in steps of "
                     f"{BLOCK_N_STEP} is a multiple or a divisor of it")


def check_problem_tiles(desc: AttentionDescriptor, tiles: TileConfig) -> None:
    """ValueError for a pinned tile `desc` cannot use: a key tile its KV pages do not fill."""
    if desc.paged is not None:
        check_paged_tile(tiles.block_n, desc.paged.page_size)


def check_paged_tile(block_n: int, page_size: int) -> None:
    if page_size % PAGE_ROW_MULTIPLE or not pages_fill(block_n, page_size):
        raise ValueError(f"sm90a tile block_n={block_n} with paged.page_size={page_size}: the key tile must be a "
                         f"multiple or a divisor of the page size, and the page size a multiple of {PAGE_ROW_MULTIPLE}")


def choose_stages(desc: AttentionDescriptor, arch: int, tiles: TileConfig) -> int:
    return STAGES


def check_tiles(direction: str, tiles: TileConfig) -> None:
    """ValueError unless fwd.cu can be built with this (pinned) tile (its static_asserts)."""
    if direction != "forward":
        raise ValueError("the sm90a generation has no backward kernel")
    if tiles.block_m not in BLOCK_MS:
        raise ValueError(f"sm90a tile block_m={tiles.block_m}: must be one of {list(BLOCK_MS)} (two or three "
                         f"consumer warpgroups of {CONSUMER_ROWS} rows)")
    if tiles.num_warps not in (num_warps(tiles.block_m), num_warps(tiles.block_m, "wgmma")):
        raise ValueError(f"sm90a tile num_warps={tiles.num_warps}: block_m={tiles.block_m} needs "
                         f"{num_warps(tiles.block_m)} (a producer warpgroup + {consumers(tiles.block_m)} consumers; "
                         f"{num_warps(tiles.block_m, 'wgmma')} in rung 'wgmma', which has no producer)")
    if not (BLOCK_N_MIN <= tiles.block_n <= BLOCK_N_MAX and tiles.block_n % BLOCK_N_STEP == 0):
        raise ValueError(f"sm90a tile block_n={tiles.block_n}: must be a multiple of {BLOCK_N_STEP} in "
                         f"{BLOCK_N_MIN}..{BLOCK_N_MAX}")


def check_variant(tiles: TileConfig, stages: int, rung: str) -> None:
    """ValueError for a (tile, stages, rung) the kernel's static_asserts refuse."""
    if tiles.num_warps != num_warps(tiles.block_m, rung):
        raise ValueError(f"sm90a tile num_warps={tiles.num_warps}: block_m={tiles.block_m} under rung {rung!r} "
                         f"needs {num_warps(tiles.block_m, rung)}")
    if rung == "wgmma" and stages != 2:
        raise ValueError(f"sm90a rung 'wgmma' double-buffers K and V: stages must be 2, not {stages}")
    if rung in PINGPONG_RUNGS and consumers(tiles.block_m) != 2:
        raise ValueError(f"sm90a rung {rung!r} takes turns between two consumers: block_m must be "
                         f"{2 * CONSUMER_ROWS}, not {tiles.block_m}")
    if not 1 <= stages <= 4:
        raise ValueError(f"sm90a stages={stages}: must be 1 to 4")
    if stages < 2 and rung != "tma":
        raise ValueError(f"sm90a rung {rung!r} holds K_k and V_(k-1) at once: stages must be 2 or more, not {stages}")


# A wave's K and V stay within this much L2 (kernels/sm90a/fwd_config.cuh kWaveL2Bytes): half the
# H100 / H200's 50 MB, so that the wave's tiles and what other traffic there is fit together.
WAVE_L2_BYTES = 24 << 20


def l2_wave_pairs(seqlen_kv: int, head_dim: int, head_dim_v: int, group: int, dtype_bytes: int = 2) -> int:
    """The most (head, sequence) pairs of a wave whose K and V fit in WAVE_L2_BYTES: whole GQA groups
    (`group` query heads share one KV head's K/V), at least one.  Counted at the real head dims (the
    bytes K and V hold in memory); the persistent queue's kernel-side twin (kernels/sm90a/
    tile_scheduler.cuh l2_wave_pairs) counts the padded head dim for both."""
    kv_bytes = max(seqlen_kv, 1) * (head_dim + head_dim_v) * dtype_bytes
    return max(1, WAVE_L2_BYTES // kv_bytes) * group


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def wave_pairs(pairs: int, group: int, longest_first: bool, cap: int) -> int:
    """The pairs per wave of a grid of one CTA per work tile (kernels/sm90a/fwd.cu launch_order_tile):
    a divisor of `pairs`, so that every wave is whole, and at least pairs / GRID_YZ_MAX (the waves are
    gridDim.z).  `longest_first` (causal masking: the work per query tile grows with the tile): the
    largest such divisor within `cap` (the pairs whose K/V fit in L2) in whole GQA groups of `group`,
    so that the longest query tiles start first across a wave.  Otherwise the smallest: one pair per
    wave where the limit allows, the (query tile, head, batch) order."""
    if pairs <= 0:
        return 1
    least = -(-pairs // GRID_YZ_MAX)
    fitting = [d for d in _divisors(pairs) if d >= least]
    if not longest_first:
        return fitting[0]
    within = [d for d in fitting if d % group == 0 and d <= max(cap, group)]
    return within[-1] if within else fitting[0]


ORDER_VARIABLE = "ATTNPLAN_SM90A_ORDER"
ORDERS = ("waves", "classic")


def launch_longest_first(desc: AttentionDescriptor) -> bool:
    """Whether a grid of one CTA per tile runs longest first across waves of pairs ("waves", what
    causal problems get) or one pair at a time ("classic", what the others get): the default, or
    what $ATTNPLAN_SM90A_ORDER names (an A/B, like $ATTNPLAN_SM90A_RUNG).  ValueError for a name
    it does not know."""
    named = os.environ.get(ORDER_VARIABLE, "").strip()
    if named and named not in ORDERS:
        raise ValueError(f"{ORDER_VARIABLE}={named!r}: the sm90a launch orders are {', '.join(ORDERS)}")
    return named == "waves" if named else desc.causal


def grid(seqlen_q: int, heads_q: int, batch: int, block_m: int, persistent_ctas: int = 0, pairs_per_wave: int = 1
         ) -> tuple[int, int, int]:
    """One CTA per work tile as (pairs per wave, query tiles, waves) (fwd.cu launch_order_tile), or with
    `persistent_ctas` (the SM count) a persistent grid of at most that many CTAs, each walking work
    tiles blockIdx.x, blockIdx.x + gridDim.x, ... (fwd.cu WorkQueue)."""
    m_blocks, pairs = math.ceil(seqlen_q / block_m), heads_q * batch
    if persistent_ctas:
        return (max(1, min(m_blocks * pairs, persistent_ctas)), 1, 1)
    if pairs % pairs_per_wave:
        raise ValueError(f"{pairs_per_wave} pairs per wave do not divide {pairs} (head, sequence) pairs")
    return (pairs_per_wave, m_blocks, pairs // pairs_per_wave)
