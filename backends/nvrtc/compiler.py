"""NVRTC: CUDA C++ source -> cubin (SASS for one arch; never PTX left for the driver).

Works without a GPU (the compile checks in CI run here).  Compiled cubins go through the disk
cache (attnplan.kernel_cache) keyed by source hash, options, arch and NVRTC version.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from attnplan.errors import KernelCompileError
from attnplan.kernel_cache import get_or_build

from . import params
from .dispatch import DispatchKey

# Options every kernel is built with.  -std=c++17 for `if constexpr`; fast-math keeps exp2f and
# the divisions single instructions, as FlashAttention does.
BASE_OPTIONS = ("-std=c++17", "--use_fast_math", "-default-device", "-lineinfo")
ENTRY_FILES = {("sm80", "forward"): "sm80/fwd.cu", ("sm80", "backward"): "sm80/bwd.cu"}
ENTRY_POINTS = {"forward": ("attn_fwd_kernel",),
                "backward": ("attn_bwd_preprocess_kernel", "attn_bwd_kernel", "attn_bwd_dq_convert_kernel"),
                "backward_deterministic": ("attn_bwd_preprocess_kernel", "attn_bwd_kernel", "attn_bwd_dq_kernel")}


class NvrtcUnavailable(RuntimeError):
    """NVRTC (cuda-python + the NVRTC library) cannot be loaded."""


def kernels_dir() -> Path:
    from attnplan.kernels import SOURCE_DIR
    return SOURCE_DIR


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


def source_for(key: DispatchKey) -> str:
    entry = ENTRY_FILES[(key.generation, key.direction)]
    return params.c_struct(key.direction) + f'#include "{entry}"\n'


def options_for(key: DispatchKey) -> list[str]:
    opts = list(BASE_OPTIONS) + [f"--gpu-architecture={key.arch}", f"-I{kernels_dir()}"]
    opts += [f"-D{name}={value}" for name, value in sorted(key.defines().items())]
    return opts


def _check(nvrtc, result, what: str):
    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {err}")
    return result[1] if len(result) == 2 else result[1:]


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


def compile_key(key: DispatchKey, extra_options: tuple = ()) -> tuple[bytes, bool]:
    """The cubin for `key` (from the disk cache when present); returns (cubin, was_cached)."""
    source, options = source_for(key), options_for(key) + list(extra_options)
    # The include path differs between installs; it is not part of what the code is.
    stable_options = [o for o in options if not o.startswith("-I")]
    cache_key = hashlib.sha256("\0".join(
        [key.name, source, _tree_hash(str(kernels_dir())), nvrtc_version(), *stable_options]).encode()).hexdigest()
    meta = {"name": key.name, "arch": key.arch, "nvrtc": nvrtc_version()}
    return get_or_build(cache_key, meta, lambda: compile_source(source, key.name, options)[0])
