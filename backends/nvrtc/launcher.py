"""Loading cubins and launching kernels through the CUDA driver (via CuPy's driver bindings).

The parameter block is passed by value as the kernel's single argument (a ctypes struct built
from backends/nvrtc/params.py), so one launch costs one driver call.
"""

from __future__ import annotations

import ctypes

import attrs

# The CUDA limit on gridDim.y and gridDim.z (gridDim.x takes 2^31 - 1).
GRID_YZ_MAX = 65535


@attrs.frozen(eq=False)
class LoadedKernel:
    name: str
    function: int            # CUfunction
    module: int              # CUmodule (kept loaded for the process lifetime)
    shared_memory: int       # dynamic shared memory bytes per block
    threads: int


def load(cubin: bytes, entry: str, shared_memory: int, threads: int, device_index: int) -> LoadedKernel:
    import cupy
    driver = cupy.cuda.driver
    with cupy.cuda.Device(device_index):
        cupy.cuda.runtime.free(0)          # make sure the primary context is current
        module = driver.moduleLoadData(cubin)
        function = driver.moduleGetFunction(module, entry)
        if shared_memory > 48 * 1024:      # above 48 KB a block must opt in
            driver.funcSetAttribute(function, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                    shared_memory)
    return LoadedKernel(entry, function, module, shared_memory, threads)


def launch(kernel: LoadedKernel, grid: tuple, params: ctypes.Structure, stream: int) -> None:
    import cupy
    argument_pointers = (ctypes.c_void_p * 1)(ctypes.addressof(params))
    gx, gy, gz = (int(g) for g in grid)
    if gx == 0 or gy == 0 or gz == 0:
        return
    cupy.cuda.driver.launchKernel(kernel.function, gx, gy, gz, kernel.threads, 1, 1, kernel.shared_memory,
                                  stream, ctypes.addressof(argument_pointers), 0)
