"""Compile every kernel the GPU tests need into $ATTNPLAN_CACHE_DIR (run on a CPU machine,
then carry the cache to the GPU machine: same NVRTC, same keys, no compile time there).

    python3 warm_cache.py [ARCH] [forward|backward|all]      (default: 90 all; backward keys first)
"""

import sys

from attnplan.backends.nvrtc.warmup import compile_all, keys_for
from cases import backward_cases, benchmark_cases, forward_cases, pinned_backward_cases

arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
which = sys.argv[2] if len(sys.argv) > 2 else "all"
descs = []
if which in ("backward", "all"):
    descs += [d for _, d in backward_cases() + benchmark_cases()]
    descs += [d.replace(direction="forward", return_lse=True) for _, d in benchmark_cases()]
if which in ("forward", "all"):
    descs += [d for _, d in forward_cases()]
keys = keys_for(descs, arch)
if which in ("backward", "all"):
    from attnplan.backends.nvrtc import sm80
    from attnplan.backends.nvrtc.backend import NvrtcBackend
    from attnplan.device import Device
    keys += [NvrtcBackend(sm80.GENERATION).dispatch_key(desc, Device.cuda(arch=arch), config)
             for _, desc, config in pinned_backward_cases()]
sys.exit(1 if compile_all(keys) else 0)
