"""The NVRTC backend: our own FlashAttention kernels, compiled at first use for the device's arch.

A kernel generation (sm80 today; sm89 and sm90a later) is a `Generation` value: its minimum arch,
its capabilities, its tile chooser and its entry files.  Each generation is registered as its own
candidate (`nvrtc.sm80`, ...), so the planner ranks them apart; adding one is adding a value to
GENERATIONS.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import attrs

import attnplan
from attnplan.backend import Backend, Executable
from attnplan.capabilities import Capabilities
from attnplan.descriptor import AttentionDescriptor
from attnplan.device import Device
from attnplan.layout_cache import LayoutCache
from attnplan.sku import KernelSku, PrecisionGuarantee
from attnplan.streams import stream_handle

from . import compiler, launcher, params, sm80_tiles
from .backward import BackwardRunner
from .dispatch import DispatchKey, TileConfig
from .launch_params import (check_vector_access, check_vector_pointers, check_vector_strides, layout_values,
                            pointer_values)



@attrs.frozen
class Generation:
    name: str
    min_arch: int
    capabilities: Capabilities
    choose_tiles: Callable[[AttentionDescriptor, int], TileConfig]
    # The deterministic backward's dQ kernel tile (None: not deterministic / no such kernel).
    choose_dq_tiles: Callable[[AttentionDescriptor, int], Optional[TileConfig]] = lambda desc, arch: None
    # Buffer count of the backward's query-side tiles for a tile config.
    choose_stages: Callable[[AttentionDescriptor, int, TileConfig], int] = lambda desc, arch, tiles: 1


def _sm80_tiles(desc: AttentionDescriptor, arch: int) -> TileConfig:
    if desc.direction == "backward":
        cfg = sm80_tiles.backward_tile_config(desc.head_dim, desc.head_dim_v, arch, desc.causal)
    else:
        cfg = sm80_tiles.tile_config(desc.head_dim, desc.head_dim_v, arch)
    return TileConfig(cfg["block_m"], cfg["block_n"], cfg["num_warps"])


def _sm80_dq_tiles(desc: AttentionDescriptor, arch: int) -> Optional[TileConfig]:
    if desc.direction != "backward" or not desc.deterministic:
        return None
    cfg = sm80_tiles.dq_tile_config(desc.head_dim, desc.head_dim_v, arch)
    return TileConfig(cfg["block_m"], cfg["block_n"], cfg["num_warps"])


def _sm80_stages(desc: AttentionDescriptor, arch: int, tiles: TileConfig) -> int:
    if desc.direction != "backward":
        return sm80_tiles.forward_stages(desc.head_dim, desc.head_dim_v, tiles.block_m, tiles.block_n, arch)
    return sm80_tiles.backward_stages(desc.head_dim, desc.head_dim_v, tiles.block_m, tiles.block_n, arch)


SM80 = Generation(
    name="sm80",
    min_arch=80,
    capabilities=Capabilities(
        devices=frozenset({"cuda"}), min_arch=80, dtypes=frozenset({"f16", "bf16"}),
        backward_dtypes=frozenset({"f16", "bf16"}), head_dims=frozenset(range(32, 257, 8)),
        directions=frozenset({"forward", "backward"}), paged_backward=False, bias=False,
    ),
    choose_tiles=_sm80_tiles,
    choose_dq_tiles=_sm80_dq_tiles,
    choose_stages=_sm80_stages,
)
GENERATIONS = (SM80,)


def compile_arch(generation: Generation, device_arch: int) -> str:
    """The NVRTC target: the device's own arch (sm_90a only for kernels that need wgmma/TMA)."""
    return f"sm_{device_arch}"


class NvrtcBackend(Backend):
    """One kernel generation, registered as its own candidate `nvrtc.<generation>`; the facade checks
    that generation's capabilities, so each generation is accepted or rejected on its own merits."""

    family = "nvrtc"

    def __init__(self, generation: Generation = SM80):
        self.generation = generation
        self.name = f"{self.family}.{generation.name}"

    @property
    def capabilities(self) -> Capabilities:
        return self.generation.capabilities

    def reasons(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        generation, reasons = self.generation, []
        if device.arch is not None:
            try:
                generation.choose_tiles(desc, device.arch)
                generation.choose_dq_tiles(desc, device.arch)
            except ValueError as exc:
                reasons.append(str(exc))
        return reasons

    def availability(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        missing = []
        try:
            compiler.nvrtc_version()
        except compiler.NvrtcUnavailable as exc:
            missing.append(f"{exc} (pip install attnplan[cuda13] or [cuda12])")
        if device.kind == "cuda" and device.present:
            try:
                import cupy  # noqa: F401
            except ImportError:
                missing.append("CuPy is not installed (pip install attnplan[cuda13] or [cuda12])")
        return missing

    def precision(self, desc: AttentionDescriptor, device: Device) -> PrecisionGuarantee:
        # The forward and the deterministic backward use no atomics; the default backward adds dQ
        # with fp32 atomics, whose order varies run to run.
        exact = desc.direction == "forward" or desc.deterministic
        return PrecisionGuarantee(math_precision=desc.dtype, accumulator="f32", deterministic=exact, bit_stable=exact)

    def library_versions(self) -> dict:
        try:
            return {"nvrtc": compiler.nvrtc_version()}
        except compiler.NvrtcUnavailable:
            return {}

    def dispatch_key(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> DispatchKey:
        generation = self.generation
        tiles = generation.choose_tiles(desc, device.arch)
        dq_tiles = generation.choose_dq_tiles(desc, device.arch)
        if config:
            tiles = TileConfig(int(config["block_m"]), int(config["block_n"]), int(config["num_warps"]))
            if desc.direction == "backward":
                sm80_tiles.check_backward_tile(tiles.block_m, tiles.block_n, tiles.num_warps)
            if dq_tiles is not None and "dq_block_m" in config:
                dq_tiles = TileConfig(int(config["dq_block_m"]), int(config["dq_block_n"]), int(config["dq_num_warps"]))
        stages = generation.choose_stages(desc, device.arch, tiles)
        if config and "stages" in config:
            stages = int(config["stages"])
        return DispatchKey.for_problem(desc, generation.name, compile_arch(generation, device.arch), tiles, dq_tiles,
                                       stages)

    def kernel_name(self, desc: AttentionDescriptor, device: Device) -> str:
        return self.dispatch_key(desc, device).name

    def build(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> Executable:
        key = self.dispatch_key(desc, device, config)
        if desc.direction == "backward":
            return self._build_backward(desc, device, key)
        shared = sm80_tiles.shared_memory_bytes(desc.head_dim, desc.head_dim_v, key.tiles.block_m, key.tiles.block_n,
                                                key.stages)
        sm80_tiles.check_fits(shared, device.arch, key.name)
        cubin, _ = compiler.compile_key(key)
        sku = KernelSku(backend=self.name, kernel=key.name, arch=device.arch_name, dtype=desc.dtype,
                        precision=self.precision(desc, device),
                        config={**key.tiles.as_dict(), "stages": key.stages, "shared_memory_bytes": shared},
                        workspace_bytes=0,
                        versions={"attnplan": attnplan.__version__, **self.library_versions()},
                        notes="forward: one CTA per (query tile, head, batch); no atomics")
        runner = ForwardRunner(desc, key, cubin, shared, device)
        return Executable(sku=sku, workspace_size=0, forward=runner, check_arguments=runner.check_arguments)


    def _build_backward(self, desc: AttentionDescriptor, device: Device, key: DispatchKey) -> Executable:
        t = key.tiles
        shared = sm80_tiles.backward_shared_memory_bytes(desc.head_dim, desc.head_dim_v, t.block_m, t.block_n,
                                                         key.stages)
        sm80_tiles.check_fits(shared, device.arch, key.name)
        config = {**t.as_dict(), "stages": key.stages, "shared_memory_bytes": shared}
        dq_shared = 0
        if key.dq_tiles is not None:
            d = key.dq_tiles
            dq_shared = sm80_tiles.dq_shared_memory_bytes(desc.head_dim, desc.head_dim_v, d.block_m, d.block_n)
            sm80_tiles.check_fits(dq_shared, device.arch, key.name + " (dQ kernel)")
            config.update({"dq_block_m": d.block_m, "dq_block_n": d.block_n, "dq_num_warps": d.num_warps,
                           "dq_shared_memory_bytes": dq_shared})
        cubin, _ = compiler.compile_key(key)
        runner = BackwardRunner(desc, key, cubin, shared, dq_shared, device)
        precision = self.precision(desc, device)
        notes = ("backward: dK/dV per (key tile, kv head, sequence) over the GQA group; "
                 + ("dQ per (query tile, head, sequence), no atomics" if precision.deterministic
                    else "dQ through fp32 atomics (run-to-run bits may differ)"))
        sku = KernelSku(backend=self.name, kernel=key.name, arch=device.arch_name, dtype=desc.dtype,
                        precision=precision, config=config, workspace_bytes=runner.workspace_size,
                        versions={"attnplan": attnplan.__version__, **self.library_versions()}, notes=notes)
        return Executable(sku=sku, workspace_size=runner.workspace_size, backward=runner,
                          check_arguments=runner.check_arguments)


FORWARD_PER_CALL = ("q", "k", "v", "out", "lse", "alibi_slopes", "sink_logits", "cu_seqlens_q", "cu_seqlens_kv",
                    "block_table", "seqlens_kv", "dropout_seed")


class ForwardRunner:
    """Launches the forward kernel for bound arguments (loads the module on first use).  The stride
    checks and the parameter block's layout fields are worked out once per argument signature."""

    def __init__(self, desc: AttentionDescriptor, key: DispatchKey, cubin: bytes, shared: int, device: Device):
        self.desc, self.key, self.cubin, self.shared, self.device = desc, key, cubin, shared, device
        self.grid = (math.ceil(desc.seqlen_q / key.tiles.block_m), desc.heads_q, desc.batch)
        self._kernel = None
        self._checked = LayoutCache()
        self._blocks = LayoutCache()

    def kernel(self):
        if self._kernel is None:
            self._kernel = launcher.load(self.cubin, "attn_fwd_kernel", self.shared,
                                         self.key.tiles.num_warps * 32, self.device.index)
        return self._kernel

    def check_arguments(self, bound) -> None:
        check_vector_access({"q": bound.q, "k": bound.k, "v": bound.v, "out": bound.out}, bound.signature,
                            self._checked)

    def _block(self, bound, out, lse) -> params.ParamBlock:
        check_vector_strides({"out": out})          # q, k, v: checked by Plan.can_implement
        return params.ParamBlock("forward", layout_values(self.desc, bound, out, lse), FORWARD_PER_CALL)

    def __call__(self, bound, out, lse) -> None:
        block = self._blocks.get(bound.signature, self._block, bound, out, lse)
        check_vector_pointers({"out": out})
        handle = stream_handle(bound.stream, bound.q.origin)
        launcher.launch(self.kernel(), self.grid, block.fill(pointer_values(bound, out, lse)), handle)


def backends() -> list[NvrtcBackend]:
    """One registry candidate per kernel generation, oldest first."""
    return [NvrtcBackend(generation) for generation in GENERATIONS]
