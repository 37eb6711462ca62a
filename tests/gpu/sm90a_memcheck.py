"""One launch of each sm90a memcheck case (tests/gpu/sm90a_cases.py) for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 tests/gpu/sm90a_memcheck.py

Inputs are made on the host and copied (no CuPy kernels to check besides the poison fill); the
outputs must come back without NaN (every element written)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from attnplan import Plan  # noqa: E402
from attnplan.accuracy import host_f64  # noqa: E402
from attnplan.device import default_device  # noqa: E402
from attnplan.problems import random_inputs  # noqa: E402
from sm90a_cases import memcheck_cases  # noqa: E402
from support import poisoned_outputs  # noqa: E402


def main() -> int:
    import cupy
    device = default_device()
    failures = 0
    rung = os.environ.get("ATTNPLAN_SM90A_RUNG", "")
    for name, desc in memcheck_cases():
        if desc.paged is not None and rung == "wgmma":
            print(f"{name}: skipped (rung wgmma declines paged KV)", flush=True)
            continue
        args = random_inputs(desc, device, seed=1)
        plan = Plan.select(desc, device, prefer="nvrtc.sm90a", restrict=True)
        out, lse = poisoned_outputs(desc, args)
        plan.run(out=out, lse=lse, **args)
        cupy.cuda.Device().synchronize()
        written = bool(np.isfinite(host_f64(out)).all() and not np.isnan(host_f64(lse)).any())
        failures += not written
        print(f"{name}: {plan.sku.kernel} outputs {'all written' if written else 'NOT ALL WRITTEN'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
