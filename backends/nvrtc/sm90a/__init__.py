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

from pathlib import Path

from attnplan.capabilities import Capabilities

from ..dispatch import DispatchKey
from ..generation import Generation, Module
from . import tiles
from .runner import FORWARD_PARAMS, ForwardRunner, forward_entry_points

VERIFICATION = Path(__file__).with_name("verified.json")
RUNG = "tma"     # one producer warpgroup (TMA ring) + two consumer warpgroups, no intra-warpgroup overlap


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
    rung=lambda desc, arch: RUNG,
)

__all__ = ["GENERATION", "RUNG", "VERIFICATION"]
