"""The NVRTC backend: our own FlashAttention kernels, compiled at first use for the device's arch.

Each kernel generation (generation.py; the list is generations.py) is registered as its own
candidate `nvrtc.<generation>`, so the planner ranks them apart.  What follows is the same for
every generation: the dispatch key, the compile, the SKU, and its pinning (source hash, options).
"""

from __future__ import annotations

from typing import Optional

import attnplan
from attnplan.backend import Backend, Executable
from attnplan.capabilities import Capabilities
from attnplan.descriptor import AttentionDescriptor
from attnplan.device import Device
from attnplan.sku import KernelSku, PrecisionGuarantee

from . import compiler
from .dispatch import DispatchKey, TileConfig
from .generation import Generation, verified_rungs
from .generations import GENERATIONS
from attnplan.install_hints import install_hint


# The features a verification record may list under "features" (a record without the key verifies them all).
GATED_FEATURES = ("varlen", "paged", "bhsd")


def used_gated_features(desc: AttentionDescriptor) -> list[str]:
    return [name for name, used in (("varlen", desc.varlen), ("paged", desc.paged is not None),
                                    ("bhsd", desc.layout == "bhsd")) if used]


class NvrtcBackend(Backend):
    """One kernel generation, registered as its own candidate `nvrtc.<generation>`; the facade checks
    that generation's capabilities, so each generation is accepted or rejected on its own merits."""

    family = "nvrtc"

    def __init__(self, generation: Optional[Generation] = None):
        self.generation = generation if generation is not None else GENERATIONS[0]
        self.name = f"{self.family}.{self.generation.name}"

    @property
    def capabilities(self) -> Capabilities:
        return self.generation.capabilities

    def reasons(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        generation, reasons = self.generation, []
        if device.arch is not None:
            try:
                generation.choose_tiles(desc, device.arch, generation.rung(desc, device.arch))
                generation.choose_dq_tiles(desc, device.arch)
            except ValueError as exc:
                reasons.append(str(exc))
        return reasons

    def gate(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        record = self.generation.verification
        if record is None or device.arch is None:
            return []
        try:
            rung = self.generation.rung(desc, device.arch)
        except ValueError:
            return []          # reasons() rejects the problem with this error
        entry = verified_rungs(record).get(rung)
        opt_in = f"the planner does not choose it; opt in with prefer={self.name!r} or ATTNPLAN_UNVERIFIED={self.name}"
        if entry is None:
            return [f"not verified on a GPU yet (rung {rung!r}): {opt_in}"]
        # a record may name the (head_dim, head_dim_v) pairs it verified: kernels written since stay gated
        pairs = entry.get("head_dims") if isinstance(entry, dict) else None
        if pairs is not None and [desc.head_dim, desc.head_dim_v] not in [list(p) for p in pairs]:
            verified = ", ".join(f"{d}/{v}" for d, v in pairs)
            return [f"not verified on a GPU yet (rung {rung!r} at head dims {desc.head_dim}/{desc.head_dim_v}; "
                    f"verified: {verified}): {opt_in}"]
        # ... and the layout features it verified (GATED_FEATURES): a kernel path added since stays gated
        features = entry.get("features") if isinstance(entry, dict) else None
        if features is not None:
            missing = [name for name in used_gated_features(desc) if name not in features]
            if missing:
                verified = ", ".join(features) or "dense layouts only"
                return [f"not verified on a GPU yet (rung {rung!r} with {', '.join(missing)}; verified: {verified}): "
                        f"{opt_in}"]
        return []

    def availability(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        missing = []
        try:
            compiler.nvrtc_version()
        except compiler.NvrtcUnavailable as exc:
            missing.append(f"{exc} ({install_hint('cuda13', 'cuda12')})")
        else:
            targets = compiler.supported_archs()
            if device.kind == "cuda" and device.arch is not None and device.arch not in targets:
                missing.append(f"NVRTC {compiler.nvrtc_version()} cannot target sm_{device.arch} "
                               f"(it targets {', '.join(f'sm_{arch}' for arch in targets)})")
        if device.kind == "cuda" and device.present:
            try:
                import cupy  # noqa: F401
            except ImportError:
                missing.append(f"CuPy is not installed ({install_hint('cuda13', 'cuda12')})")
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
        rung = generation.rung(desc, device.arch)
        if config and "rung" in config:
            rung = str(config["rung"])
            generation.check_rung(rung)
        tiles = generation.choose_tiles(desc, device.arch, rung)
        dq_tiles = generation.choose_dq_tiles(desc, device.arch)
        if config and "block_m" in config:
            tiles = TileConfig(*(_pinned_int(config, k) for k in ("block_m", "block_n", "num_warps")))
            generation.check_tiles(desc.direction, tiles)
            if dq_tiles is not None and "dq_block_m" in config:
                dq_tiles = TileConfig(*(_pinned_int(config, k) for k in ("dq_block_m", "dq_block_n", "dq_num_warps")))
        stages = generation.choose_stages(desc, device.arch, tiles)
        if config and "stages" in config:
            stages = _pinned_int(config, "stages")
        if config:
            generation.check_variant(tiles, stages, rung)
            generation.check_problem_tiles(desc, tiles)
        return DispatchKey.for_problem(desc, generation.name, generation.compile_arch(device.arch), tiles, dq_tiles,
                                       stages, rung)

    def kernel_name(self, desc: AttentionDescriptor, device: Device) -> str:
        return self.dispatch_key(desc, device).name

    def cubins(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> list[tuple]:
        """(module name, cubin, entry points) of every module a plan for `desc` would launch, compiled
        (or read from the disk cache) without a GPU: what `attnplan kernel inspect` reads."""
        key = self.dispatch_key(desc, device, config)
        cubin, _ = compiler.compile_key(key, generation=self.generation)
        return [(key.name, cubin, self.generation.entry_points(key))]

    def pins(self, key: DispatchKey) -> dict:
        """What a SKU records so that a pinned plan is the same code: the kernel source's hash and the
        compile options (arch, macros)."""
        return {"source_hash": compiler.source_hash(key, self.generation),
                "options": compiler.pinned_options(key, self.generation)}

    def build(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> Executable:
        """Compile (or read from the disk cache) and wrap in the generation's runner; a pinned `config`
        (a SKU's) must name the same tiles, source hash and options."""
        generation = self.generation
        key = self.dispatch_key(desc, device, config)
        shared = generation.shared_memory(key)
        generation.check_fits(shared, device.arch, key.name)
        pins = self.pins(key)
        _check_pins(config or {}, pins)
        cubin, _ = compiler.compile_key(key, generation=generation)
        module = generation.module(key.direction)
        runner = module.runner(desc, key, cubin, shared, device, module.params)
        built = {**key.tiles.as_dict(), "stages": key.stages, **({"rung": key.rung} if key.rung else {}), **shared,
                 **pins}
        if key.dq_tiles is not None:
            d = key.dq_tiles
            built.update({"dq_block_m": d.block_m, "dq_block_n": d.block_n, "dq_num_warps": d.num_warps})
        workspace = generation.workspace_size(desc)
        sku = KernelSku(backend=self.name, kernel=key.name, arch=device.arch_name, dtype=desc.dtype,
                        precision=self.precision(desc, device), config=built, workspace_bytes=workspace,
                        versions={"attnplan": attnplan.__version__, **self.library_versions()}, notes=runner.notes)
        return Executable(sku=sku, workspace_size=workspace, check_arguments=runner.check_arguments,
                          **{key.direction: runner})


def _pinned_int(config: dict, key: str) -> int:
    """config[key] as an int; ValueError (a pinned config it cannot build) when it is missing or not one."""
    if key not in config:
        raise ValueError(f"pinned config has no {key!r} (it names {sorted(config)})")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"pinned config {key}={value!r} is not an integer")
    return int(value)


def _check_pins(config: dict, pins: dict) -> None:
    """ValueError saying what differs when a pinned config's source hash or options are not this build's."""
    pinned = config.get("source_hash")
    if pinned is not None and pinned != pins["source_hash"]:
        raise ValueError(f"the kernel source changed: the SKU was compiled from source {pinned}, "
                         f"the kernels here are {pins['source_hash']}")
    pinned = config.get("options")
    if pinned is not None and list(pinned) != pins["options"]:
        only_pinned = [o for o in pinned if o not in pins["options"]]
        only_here = [o for o in pins["options"] if o not in pinned]
        raise ValueError(f"the compile options differ: the SKU has {only_pinned or 'them in another order'}, "
                         f"this build {only_here or 'the same set'}")


def backends() -> list[NvrtcBackend]:
    """One registry candidate per kernel generation, oldest first."""
    return [NvrtcBackend(generation) for generation in GENERATIONS]
