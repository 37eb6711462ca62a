"""Compile every kernel the GPU tests need into $ATTNPLAN_CACHE_DIR (run on a CPU machine,
then carry the cache to the GPU machine: same NVRTC, same keys, no compile time there)."""

import sys

from attnplan.backends.nvrtc.warmup import compile_all, keys_for
from cases import forward_cases

arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
keys = keys_for([d for _, d in forward_cases()], arch)
sys.exit(1 if compile_all(keys) else 0)
