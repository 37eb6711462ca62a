"""The sm_90a kernel generation (kernels/sm90a/fwd.cu: TMA, wgmma, warp specialization), Hopper only,
compiled for sm_90a: tiles.py chooses the tiles and sizes shared memory, runner.py encodes the TMA
maps (tma.py) and launches.  Landed gated: the planner does not choose it until a GPU run has
verified its rung (verified.json; tests/gpu/sm90a_ladder.sh writes the evidence).

Forward only, f16 / bf16, head dims 64, 128 and 256 (head_dim_v equal), dense bshd, every mask
feature (causal either alignment, sliding window, sink tokens), softcap, ALiBi, sink logits,
GQA / MQA and the LSE.  Declined, with the planner's reasons: the backward pass, dropout, varlen and
paged KV, an additive bias, fp8, the bhsd and thd layouts.
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
# The rungs, simplest first (kernels/sm90a/fwd_config.cuh Rung): "tma" is one producer warpgroup (the
# TMA ring) and two consumer warpgroups that wait for each GEMM; "overlap" adds the intra-warpgroup
# overlap of the softmax with the GEMMs; "pingpong" adds the consumers' turns on named barriers;
# "persistent" is "overlap" in a persistent grid (about one CTA per SM walking the work tiles).
RUNGS = ("tma", "overlap", "pingpong", "persistent")
RUNG = "tma"                      # what a problem gets unless $ATTNPLAN_SM90A_RUNG names another
# The fastest rung per head dim, by measurement (docs/fa3-notes.md); a problem gets it once verified.
FASTEST_RUNG = {64: "persistent", 128: "persistent", 256: "pingpong"}
RUNG_VARIABLE = "ATTNPLAN_SM90A_RUNG"


# Where an overlapped rung needs more registers than the consumers' setmaxnreg budget (S_k, P_(k-1)
# and O live at once) and ptxas spills (tests/test_sm90a_forward.py asserts no local memory): those
# problems keep rung "tma" unless $ATTNPLAN_SM90A_RUNG or a pinned config names another.
def _overlap_spills(desc) -> bool:
    return desc.head_dim == 256 and desc.alibi


def choose_rung(desc, arch: int) -> str:
    """The rung a problem gets: the one $ATTNPLAN_SM90A_RUNG names (an A/B or a bisection; "fastest":
    FASTEST_RUNG's for the head dim) or RUNG; an overlapped rung that would spill gives way to "tma"
    unless named."""
    named = os.environ.get(RUNG_VARIABLE, "").strip()
    if named and named not in RUNGS + ("fastest",):
        raise ValueError(f"{RUNG_VARIABLE}={named!r}: the sm90a rungs are {', '.join(RUNGS)} (or 'fastest')")
    if named and named != "fastest":
        return named
    rung = FASTEST_RUNG.get(desc.head_dim, RUNG) if named == "fastest" else RUNG
    return "tma" if rung != "tma" and _overlap_spills(desc) else rung


def _forward_shared_memory(key: DispatchKey) -> int:
    return tiles.shared_memory_bytes(key.head_dim, key.tiles.block_m, key.tiles.block_n, key.stages)


GENERATION = Generation(
    name="sm90a",
    capabilities=Capabilities(
        devices=frozenset({"cuda"}), min_arch=90, max_arch=90, dtypes=frozenset({"f16", "bf16"}),
        backward_dtypes=frozenset(), layouts=frozenset({"bshd"}), head_dims=frozenset(tiles.HEAD_DIMS),
        head_dim_v_differs=False, directions=frozenset({"forward"}), dropout=False, dropout_in_backward=False,
        varlen=False, paged=False, paged_backward=False, bias=False, deterministic_backward=False,
    ),
    choose_tiles=tiles.choose_tiles,
    forward=Module(entry_file="sm90a/fwd.cu", params=FORWARD_PARAMS, entry_points=forward_entry_points,
                   shared_memory=_forward_shared_memory, runner=ForwardRunner),
    smem_limit=tiles.smem_limit,
    choose_stages=tiles.choose_stages,
    check_tiles=tiles.check_tiles,
    arch_suffix="a",
    verification=VERIFICATION,
    rung=choose_rung,
    rungs=RUNGS,
)

__all__ = ["GENERATION", "RUNG", "RUNGS", "VERIFICATION"]
