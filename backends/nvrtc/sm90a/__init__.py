"""The sm_90a kernel generation (kernels/sm90a/fwd.cu: TMA, wgmma, warp specialization), Hopper only,
compiled for sm_90a: tiles.py chooses the tiles and sizes shared memory, runner.py encodes the TMA
maps (tma.py) and launches.  Gated per rung, head dim pair and layout feature: the planner chooses a
kernel only once a GPU run has verified it (verified.json: every rung at head dims 64, 96, 128, 256,
192 and 192/128, dense, varlen and paged (not rung wgmma), H200, 2026-12-02; tests/gpu/sm90a_ladder.sh
writes the evidence).

Forward only, f16 / bf16, head dims 64, 96 (in d=128's tiles, padded), 128, 192 and 256 (head_dim_v
equal, or 128 with 192), dense
bshd, varlen thd and paged KV (pages of a multiple of 8 keys), every mask feature (causal either
alignment, sliding window, sink tokens), softcap, ALiBi, sink logits, GQA / MQA and the LSE.
The bhsd layout (what PyTorch's SDPA passes) takes the same kernels through maps of its strides
(tma.py LAYOUT_DIMS); gated as a layout feature until a GPU run verifies it.
Declined, with the planner's reasons: the backward pass, dropout, an additive bias, fp8, page sizes
no key tile fits, paged KV under rung wgmma.
"""

from __future__ import annotations

import os
from pathlib import Path

from attnplan.capabilities import Capabilities

from ..dispatch import DispatchKey
from ..generation import Generation, Module
from . import tiles
from .runner import FORWARD_PARAMS, ForwardRunner, forward_entry_points

VERIFICATION = Path(__file__).with_name("verified.json")
# The rungs, simplest first (kernels/sm90a/fwd_config.cuh Rung): "wgmma" has no producer (the
# consumers copy their tiles by cp.async, kernels/sm90a/fwd_cp_async.cuh); "tma" is one producer warpgroup (the
# TMA ring) and two consumer warpgroups that wait for each GEMM; "overlap" adds the intra-warpgroup
# overlap of the softmax with the GEMMs; "pingpong" adds the consumers' turns on named barriers;
# "persistent" is "overlap" in a persistent grid (about one CTA per SM walking the work tiles).
# "pingpong_persistent" is "pingpong" in the persistent grid (FlashAttention-3's schedule for causal problems).
RUNGS = ("wgmma", "tma", "overlap", "pingpong", "persistent", "pingpong_persistent")
# What a problem gets unless $ATTNPLAN_SM90A_RUNG names another: the fastest in the H200 sweeps on
# the measured tiles (bench/results/2026-12-02-h200-sm90a-*.json, docs/fa3-notes.md): "overlap",
# except that causal problems at d=128 and d=256 get "pingpong" (their short rows gain 2-6% from the
# turns, e.g. d=128 s=2k 450 vs 424 TFLOP/s; non-causal and long rows are within 1.5% either way).
RUNG = "overlap"
CAUSAL_PINGPONG_HEAD_DIMS = (96, 128, 256)
RUNG_VARIABLE = "ATTNPLAN_SM90A_RUNG"


# Where an overlapped rung needs more registers than the consumers' setmaxnreg budget (S_k, P_(k-1)
# and O live at once) and ptxas spills (tests/test_sm90a_forward.py asserts no local memory): an
# output of 192 or 256 columns (O is head_dim_v / 2 floats per thread) with ALiBi, or in the
# persistent grid; and the persistent grid's producer with paged KV (the work queue and the page
# table's walk do not fit its 40 registers).  Those problems get the next rung down that does not
# spill ("overlap", else "tma") unless $ATTNPLAN_SM90A_RUNG or a pinned config names the rung (which
# then runs, spilling).
WIDE_OUTPUT = 192


def spills(desc, rung: str) -> bool:
    persistent = rung in tiles.PERSISTENT_RUNGS
    if persistent and desc.paged is not None:
        return True
    return rung not in ("tma", "wgmma") and desc.head_dim_v >= WIDE_OUTPUT and (desc.alibi or persistent)


def fallback_rung(desc, rung: str) -> str:
    """`rung`, or where its kernel would spill the next rung down that does not."""
    if not spills(desc, rung):
        return rung
    below = {"persistent": "overlap", "pingpong_persistent": "pingpong"}.get(rung)
    return below if below is not None and not spills(desc, below) else "tma"


def choose_rung(desc, arch: int) -> str:
    """The rung a problem gets: the one $ATTNPLAN_SM90A_RUNG names (an A/B or a bisection) or RUNG,
    except that a problem whose kernel would spill gets the next rung down (fallback_rung) unless it is named."""
    named = os.environ.get(RUNG_VARIABLE, "").strip()
    if named and named not in RUNGS:
        raise ValueError(f"{RUNG_VARIABLE}={named!r}: the sm90a rungs are {', '.join(RUNGS)}")
    if named:
        return named
    rung = "pingpong" if desc.causal and desc.head_dim in CAUSAL_PINGPONG_HEAD_DIMS else RUNG
    return fallback_rung(desc, rung)


def _forward_shared_memory(key: DispatchKey) -> int:
    return tiles.shared_memory_bytes(key.head_dim, key.tiles.block_m, key.tiles.block_n, key.stages,
                                     head_dim_v=key.head_dim_v)


GENERATION = Generation(
    name="sm90a",
    capabilities=Capabilities(
        devices=frozenset({"cuda"}), min_arch=90, max_arch=90, dtypes=frozenset({"f16", "bf16"}),
        backward_dtypes=frozenset(), layouts=frozenset({"bshd", "bhsd", "thd"}), head_dims=frozenset(tiles.HEAD_DIMS),
        head_dim_v_differs=True, directions=frozenset({"forward"}), dropout=False, dropout_in_backward=False,
        varlen=True, paged=True, paged_backward=False, bias=False, deterministic_backward=False,
    ),
    choose_tiles=tiles.choose_tiles,
    forward=Module(entry_file="sm90a/fwd.cu", params=FORWARD_PARAMS, entry_points=forward_entry_points,
                   shared_memory=_forward_shared_memory, runner=ForwardRunner),
    smem_limit=tiles.smem_limit,
    choose_stages=tiles.choose_stages,
    check_tiles=tiles.check_tiles,
    check_variant=tiles.check_variant,
    check_problem_tiles=tiles.check_problem_tiles,
    arch_suffix="a",
    verification=VERIFICATION,
    rung=choose_rung,
    rungs=RUNGS,
)

__all__ = ["GENERATION", "RUNG", "RUNGS", "VERIFICATION"]
