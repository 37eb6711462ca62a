"""Compile every sm90a kernel the GPU ladder needs (tests/gpu/sm90a_cases.py), in parallel, into
$ATTNPLAN_CACHE_DIR, so the ladder's cases do not compile one by one.  Exit status 1 if any failed.

    python3 sm90a_warm.py [ARCH]       (default 90)
"""

import sys
import time

from attnplan.backends.nvrtc import compiler
from attnplan.backends.nvrtc.warmup import compile_all, keys_for
from sm90a_cases import forward_cases, memcheck_cases

arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
descs = [d for _, d, _ in forward_cases()] + [d for _, d in memcheck_cases()]
keys = [key for key in keys_for(descs, arch) if key.generation == "sm90a"]
started = time.perf_counter()
failures = compile_all(keys)
print(f"sm90a: {len(keys) - failures} of {len(keys)} kernels compiled (NVRTC {compiler.nvrtc_version()}) "
      f"in {time.perf_counter() - started:.1f} s")
sys.exit(1 if failures else 0)
