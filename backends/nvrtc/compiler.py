"""NVRTC: CUDA C++ source -> cubin (SASS for one arch; never PTX left for the driver).

Works without a GPU (the compile checks in CI run here).  Compiled cubins go through the disk
cache (attnplan.kernel_cache) keyed by source hash, options, arch and NVRTC version.
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path
from typing import Optional

from attnplan.errors import KernelCompileError
from attnplan.kernel_cache import get_or_build

from .dispatch import DispatchKey
from .generation import Generation
from .generations import named

# Options every kernel is built with.  -std=c++17 for `if constexpr`; fast-math keeps exp2f and
# the divisions single instructions, as FlashAttention does.
BASE_OPTIONS = ("-std=c++17", "--use_fast_math", "-default-device", "-lineinfo")


def _generation(key: DispatchKey, generation: Optional[Generation]) -> Generation:
    """The generation that makes `key`: the one given, else the one of GENERATIONS it names."""
    if generation is None:
        return named(key.generation)
    if generation.name != key.generation:
        raise ValueError(f"key {key.name} is of generation {key.generation!r}, not {generation.name!r}")
    return generation


def entry_points(key: DispatchKey, generation: Optional[Generation] = None) -> tuple:
    """The kernels a module for `key` holds, in launch order."""
    return _generation(key, generation).entry_points(key)


class NvrtcUnavailable(RuntimeError):
    """NVRTC (cuda-python + the NVRTC library) cannot be loaded."""


def kernels_dir() -> Path:
    """The package's CUDA sources (attnplan.kernels): every generation's that names no other."""
    from attnplan.kernels import SOURCE_DIR
    return SOURCE_DIR


def source_dir(generation: Generation) -> Path:
    return Path(generation.kernels_dir) if generation.kernels_dir is not None else kernels_dir()


@functools.lru_cache(maxsize=None)
def _nvrtc():
    try:
        try:
            from cuda.bindings import nvrtc
        except ImportError:          # cuda-python 12 before the cuda.bindings layout
            from cuda import nvrtc
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # ImportError, or the shared library missing
        raise NvrtcUnavailable(f"NVRTC is not available: {exc}") from None
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcUnavailable(f"nvrtcVersion failed: {err}")
    return nvrtc


def nvrtc_version() -> str:
    _, major, minor = _nvrtc().nvrtcVersion()
    return f"{major}.{minor}"


def supported_archs() -> list[int]:
    return list(_nvrtc().nvrtcGetSupportedArchs()[1])


@functools.lru_cache(maxsize=None)
def _tree_hash(root: str) -> str:
    """SHA-256 over every CUDA source below `root`: any header edit makes a new cache key."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.suffix in (".cu", ".cuh", ".h"):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def source_for(key: DispatchKey, generation: Optional[Generation] = None) -> str:
    """What NVRTC compiles for `key`: the generation's parameter struct, then its entry file."""
    module = _generation(key, generation).module(key.direction)
    return module.params.c_struct() + f'#include "{module.entry_file}"\n'


def options_for(key: DispatchKey, generation: Optional[Generation] = None) -> list[str]:
    """NVRTC options: the key's macros and the generation's shared-memory sizes for the kernels'
    static_asserts (these change the cache key, never the kernel name)."""
    generation = _generation(key, generation)
    opts = list(BASE_OPTIONS) + [f"--gpu-architecture={key.arch}", f"-I{source_dir(generation)}"]
    defines = {**key.defines(), **generation.shared_memory_defines(key)}
    opts += [f"-D{name}={value}" for name, value in sorted(defines.items())]
    return opts


def _stable(options: list[str]) -> list[str]:
    """The options without the include path, which differs between installs and is no part of the code."""
    return [o for o in options if not o.startswith("-I")]


def pinned_options(key: DispatchKey, generation: Optional[Generation] = None) -> list[str]:
    """The options a SKU records (arch, macros): what a pinned plan must be compiled with again."""
    return _stable(options_for(key, generation))


def source_hash(key: DispatchKey, generation: Optional[Generation] = None) -> str:
    """16 hex digits of SHA-256 over the source NVRTC gets for `key` and every CUDA file below the
    generation's kernels dir: a SKU records it, so a pinned plan knows when the kernel source changed."""
    generation = _generation(key, generation)
    text = source_for(key, generation) + "\0" + _tree_hash(str(source_dir(generation)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check(nvrtc, result, what: str):
    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {err}")
    return result[1] if len(result) == 2 else result[1:]


def timed_compile_source(source: str, name: str, options: list[str]) -> tuple[bytes, str, float]:
    """compile_source and the seconds it took (a picklable function for a pool of compile processes)."""
    started = time.perf_counter()
    cubin, log = compile_source(source, name, options)
    return cubin, log, time.perf_counter() - started


def compile_source(source: str, name: str, options: list[str]) -> tuple[bytes, str]:
    """(cubin, log) for `source`, or KernelCompileError carrying NVRTC's log."""
    nvrtc = _nvrtc()
    program = _check(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []),
                     "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in options]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        log_size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
        log = b" " * log_size
        _check(nvrtc, (nvrtc.nvrtcGetProgramLog(program, log)[0], None), "nvrtcGetProgramLog")
        log_text = log.decode(errors="replace").rstrip("\x00 \n")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelCompileError(name, log_text or str(status))
        size = _check(nvrtc, nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc, (nvrtc.nvrtcGetCUBIN(program, cubin)[0], None), "nvrtcGetCUBIN")
        return bytes(cubin), log_text
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def compile_key(key: DispatchKey, extra_options: tuple = (), generation: Optional[Generation] = None
                ) -> tuple[bytes, bool]:
    """The cubin for `key` (from the disk cache when present); returns (cubin, was_cached)."""
    generation = _generation(key, generation)
    source, options = source_for(key, generation), options_for(key, generation) + list(extra_options)
    cache_key = hashlib.sha256("\0".join(
        [key.name, source, _tree_hash(str(source_dir(generation))), nvrtc_version(), *_stable(options)]
    ).encode()).hexdigest()
    meta = {"name": key.name, "arch": key.arch, "nvrtc": nvrtc_version()}
    return get_or_build(cache_key, meta, lambda: compile_source(source, key.name, options)[0])
