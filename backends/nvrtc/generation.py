"""A kernel generation: everything that differs between sm80, sm90a, ... in one value.

The backend (backend.py), the compiler and the dispatch key are the same for every generation; a
`Generation` says which problems its kernels take (capabilities, tile choosers), what to compile (an
entry file and a parameter struct per direction, the compile arch), what each kernel needs
(shared-memory formulas, workspace) and how to launch it (a runner per direction).  Adding one is
a package like sm80/ and an entry in generations.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import attrs

from attnplan.capabilities import Capabilities
from attnplan.descriptor import AttentionDescriptor

from .dispatch import DispatchKey, TileConfig
from .params import StructLayout


@attrs.frozen
class Module:
    """One direction's NVRTC module.

    `runner(desc, key, cubin, shared, device, params)` returns what launches it: callable as the
    Executable's forward / backward, with `check_arguments(bound)` and `notes` (the SKU's); `shared`
    is `Generation.shared_memory(key)`.
    """

    entry_file: str                                   # relative to the generation's kernels dir
    params: StructLayout                              # prepended to the source, packed by the runner
    entry_points: Callable[[DispatchKey], tuple]      # the kernels it holds, in launch order
    shared_memory: Callable[[DispatchKey], int]       # dynamic shared memory of the main kernel
    runner: Callable
    dq_shared_memory: Optional[Callable[[DispatchKey], int]] = None   # the deterministic dQ kernel's


def _no_dq_tiles(desc: AttentionDescriptor, arch: int) -> Optional[TileConfig]:
    return None


def _one_stage(desc: AttentionDescriptor, arch: int, tiles: TileConfig) -> int:
    return 1


def _any_tiles(direction: str, tiles: TileConfig) -> None:
    return None


def _no_workspace(desc: AttentionDescriptor) -> int:
    return 0


@attrs.frozen(eq=False)
class Generation:
    name: str
    capabilities: Capabilities                        # its arch range included (min_arch, max_arch)
    # The main kernel's tile for desc.direction on sm_<arch> under a rung (see `rung`; "" for a
    # generation of one variant); ValueError when none fits.
    choose_tiles: Callable[[AttentionDescriptor, int, str], TileConfig]
    forward: Module
    smem_limit: Callable[[int], int]                  # dynamic shared memory a block may have on sm_<arch>
    backward: Optional[Module] = None
    # The deterministic backward's dQ kernel tile (None: no such kernel for this problem).
    choose_dq_tiles: Callable[[AttentionDescriptor, int], Optional[TileConfig]] = _no_dq_tiles
    # Buffers of the streamed tiles for a tile config.
    choose_stages: Callable[[AttentionDescriptor, int, TileConfig], int] = _one_stage
    # ValueError for a pinned (direction, tile) its kernels cannot be built with.
    check_tiles: Callable[[str, TileConfig], None] = _any_tiles
    # ValueError for a pinned (tile, stages, rung) combination its kernels cannot be built with.
    check_variant: Callable[[TileConfig, int, str], None] = lambda tiles, stages, rung: None
    # ValueError for a pinned tile this problem cannot use (e.g. a key tile its KV pages do not fill).
    check_problem_tiles: Callable[[AttentionDescriptor, TileConfig], None] = lambda desc, tiles: None
    workspace_size: Callable[[AttentionDescriptor], int] = _no_workspace
    # "a" for kernels that use arch-specific features (wgmma, setmaxnreg): compiled for sm_90a.
    arch_suffix: str = ""
    # Where entry files and their headers live; None: the package's kernels (compiler.kernels_dir()).
    kernels_dir: Optional[Path] = None
    # Code written without a GPU lands gated: `rung(desc, arch)` names the variant a problem gets, and
    # the planner does not choose it until `verification` (a JSON record in the package: {"rungs":
    # {rung: {"device", "date", "results"[, "head_dims": [[d, d_v], ...]]}}}, written by the GPU run)
    # lists that rung (and, where the entry names head dims, the problem's pair).  None: verified.
    verification: Optional[Path] = None
    rung: Callable[[AttentionDescriptor, int], str] = lambda desc, arch: ""
    # Every rung a pinned config (a SKU's "rung") may name; () for a generation of one variant.
    rungs: tuple = ()

    def __attrs_post_init__(self):
        if "backward" in self.capabilities.directions and self.backward is None:
            raise ValueError(f"generation {self.name}: declares a backward pass but has no backward module")

    @property
    def min_arch(self) -> int:
        return self.capabilities.min_arch

    @property
    def max_arch(self) -> int:
        return self.capabilities.max_arch

    def module(self, direction: str) -> Module:
        return self.forward if direction == "forward" else self.backward

    def compile_arch(self, device_arch: int) -> str:
        """The NVRTC target: the device's own arch, with the generation's suffix (sm_90a)."""
        return f"sm_{device_arch}{self.arch_suffix}"

    def entry_points(self, key: DispatchKey) -> tuple:
        return self.module(key.direction).entry_points(key)

    def shared_memory(self, key: DispatchKey) -> dict[str, int]:
        """Dynamic shared memory of the kernels of `key` that use any, as the SKU's config states it."""
        module = self.module(key.direction)
        shared = {"shared_memory_bytes": module.shared_memory(key)}
        if key.dq_tiles is not None:
            shared["dq_shared_memory_bytes"] = module.dq_shared_memory(key)
        return shared

    def shared_memory_defines(self, key: DispatchKey) -> dict[str, int]:
        """The formulas' sizes as macros, so that each kernel static_asserts its own layout against them."""
        shared = self.shared_memory(key)
        main = "ATTN_EXPECTED_SMEM_BYTES" if key.direction == "forward" else "ATTN_EXPECTED_BWD_SMEM_BYTES"
        defines = {main: shared["shared_memory_bytes"]}
        if "dq_shared_memory_bytes" in shared:
            defines["ATTN_EXPECTED_DQ_SMEM_BYTES"] = shared["dq_shared_memory_bytes"]
        return defines

    def check_rung(self, rung: str) -> None:
        """ValueError unless `rung` is one of this generation's variants."""
        if rung not in (self.rungs or ("",)):
            allowed = ", ".join(repr(r) for r in self.rungs) if self.rungs else "none (one variant)"
            raise ValueError(f"rung={rung!r}: the {self.name} generation's rungs are {allowed}")

    def check_fits(self, shared: dict, arch: int, kernel: str) -> None:
        """ValueError when a (pinned) tile needs more dynamic shared memory than sm_`arch` gives a block."""
        limit = self.smem_limit(arch)
        for what, needed in shared.items():
            if needed > limit:
                name = kernel + (" (dQ kernel)" if what.startswith("dq_") else "")
                raise ValueError(f"{name}: needs {needed} bytes of shared memory per block; sm_{arch} allows {limit}")


def verified_rungs(record: Optional[Path]) -> dict:
    """The rungs a verification record lists ({} for a missing or unreadable record: nothing verified)."""
    if record is None:
        return {}
    try:
        return dict(json.loads(Path(record).read_text()).get("rungs", {}))
    except (OSError, ValueError, AttributeError):
        return {}
