"""The sm80 kernel generation (kernels/sm80/fwd.cu, bwd.cu: mma.sync and cp.async), for sm_80 and
every later arch, compiled for the device's own arch: tiles.py chooses the tiles and sizes shared
memory, runners.py launches the kernels."""

from __future__ import annotations

from typing import Optional

from attnplan.capabilities import Capabilities
from attnplan.descriptor import AttentionDescriptor

from ..dispatch import DispatchKey, TileConfig
from ..generation import Generation, Module
from ..launcher import GRID_YZ_MAX
from ..params import STANDARD
from . import tiles
from .runners import BackwardRunner, ForwardRunner, backward_entry_points, forward_entry_points, workspace_size


def _tile(cfg: dict) -> TileConfig:
    return TileConfig(cfg["block_m"], cfg["block_n"], cfg["num_warps"])


def _choose_tiles(desc: AttentionDescriptor, arch: int, rung: str = "") -> TileConfig:
    # the grids are (tiles, heads, batch)
    for name, value in (("batch", desc.batch), ("heads_q", desc.heads_q)):
        if value > GRID_YZ_MAX:
            raise ValueError(f"{name}={value}: the sm80 grids put it on a grid dimension of at most {GRID_YZ_MAX}")
    if desc.direction == "backward":
        return _tile(tiles.backward_tile_config(desc.head_dim, desc.head_dim_v, arch, desc.causal))
    return _tile(tiles.tile_config(desc.head_dim, desc.head_dim_v, arch))


def _choose_dq_tiles(desc: AttentionDescriptor, arch: int) -> Optional[TileConfig]:
    if desc.direction != "backward" or not desc.deterministic:
        return None
    return _tile(tiles.dq_tile_config(desc.head_dim, desc.head_dim_v, arch))


def _choose_stages(desc: AttentionDescriptor, arch: int, t: TileConfig) -> int:
    stages = tiles.backward_stages if desc.direction == "backward" else tiles.forward_stages
    return stages(desc.head_dim, desc.head_dim_v, t.block_m, t.block_n, arch)


def _check_tiles(direction: str, t: TileConfig) -> None:
    if direction == "backward":
        tiles.check_backward_tile(t.block_m, t.block_n, t.num_warps)


def _forward_shared_memory(key: DispatchKey) -> int:
    return tiles.shared_memory_bytes(key.head_dim, key.head_dim_v, key.tiles.block_m, key.tiles.block_n, key.stages)


def _backward_shared_memory(key: DispatchKey) -> int:
    return tiles.backward_shared_memory_bytes(key.head_dim, key.head_dim_v, key.tiles.block_m, key.tiles.block_n,
                                              key.stages)


def _dq_shared_memory(key: DispatchKey) -> int:
    return tiles.dq_shared_memory_bytes(key.head_dim, key.head_dim_v, key.dq_tiles.block_m, key.dq_tiles.block_n)


GENERATION = Generation(
    name="sm80",
    capabilities=Capabilities(
        devices=frozenset({"cuda"}), min_arch=80, dtypes=frozenset({"f16", "bf16"}),
        backward_dtypes=frozenset({"f16", "bf16"}), head_dims=frozenset(range(32, 257, 8)),
        directions=frozenset({"forward", "backward"}), paged_backward=False, bias=False,
    ),
    choose_tiles=_choose_tiles,
    forward=Module(entry_file="sm80/fwd.cu", params=STANDARD["forward"], entry_points=forward_entry_points,
                   shared_memory=_forward_shared_memory, runner=ForwardRunner),
    backward=Module(entry_file="sm80/bwd.cu", params=STANDARD["backward"], entry_points=backward_entry_points,
                    shared_memory=_backward_shared_memory, runner=BackwardRunner,
                    dq_shared_memory=_dq_shared_memory),
    smem_limit=tiles.smem_limit,
    choose_dq_tiles=_choose_dq_tiles,
    choose_stages=_choose_stages,
    check_tiles=_check_tiles,
    workspace_size=workspace_size,
)

__all__ = ["GENERATION"]
