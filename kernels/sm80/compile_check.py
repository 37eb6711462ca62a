"""Compile-check kernels/sm80/fwd.cu with NVRTC to CUBIN over a matrix of macro combinations.

    python3 kernels/sm80/compile_check.py            # the full matrix (3 archs x 2 dtypes x dims x features)
    python3 kernels/sm80/compile_check.py --quick    # bf16 + f16, sm_80 + sm_90, a few dims, all features
    python3 kernels/sm80/compile_check.py --verbose  # also print ptxas register / spill lines

NVRTC options relied on (see OPTIONS): --gpu-architecture=sm_XX, -std=c++17, -I<repo>/kernels and
--ptxas-options=-v (only for the register report).  No CUDA toolkit include directory is needed.
Exits non-zero when any combination fails; failures print the NVRTC log.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "backends", "nvrtc"))

import params  # noqa: E402
import sm80_tiles  # noqa: E402

ENTRY = os.path.join(REPO, "kernels", "sm80", "fwd.cu")
OPTIONS = ["-std=c++17", f"-I{os.path.join(REPO, 'kernels')}"]

FEATURES = ("IS_CAUSAL", "HAS_WINDOW", "HAS_SINK_TOKENS", "HAS_SINK_LOGITS", "HAS_ALIBI", "HAS_SOFTCAP",
            "IS_VARLEN", "IS_PAGED", "HAS_DROPOUT")
FEATURE_SETS = (
    (),
    *((name,) for name in FEATURES),
    ("IS_CAUSAL", "HAS_WINDOW", "HAS_SINK_TOKENS", "HAS_ALIBI", "HAS_SOFTCAP", "HAS_SINK_LOGITS", "HAS_DROPOUT"),
    ("IS_VARLEN", "IS_PAGED", "IS_CAUSAL"),
)
HEAD_DIMS = ((32, 32), (64, 64), (96, 96), (128, 128), (192, 192), (192, 128), (256, 256))
ARCHS = (80, 89, 90)


def compile_one(job: tuple) -> tuple[tuple, bool, str, int]:
    """(job, ok, log, cubin_bytes) for job = (arch, bf16, head_dim, head_dim_v, features, ptxas_verbose)."""
    from cuda.bindings import nvrtc

    arch, bf16, head_dim, head_dim_v, features, verbose = job
    cfg = sm80_tiles.tile_config(head_dim, head_dim_v, arch)
    macros = {"ATTN_DTYPE_BF16": int(bf16), "HEAD_DIM": head_dim, "HEAD_DIM_V": head_dim_v,
              "BLOCK_M": cfg["block_m"], "BLOCK_N": cfg["block_n"], "NUM_WARPS": cfg["num_warps"],
              "KV_STAGES": cfg["stages"], "ATTN_EXPECTED_SMEM_BYTES": cfg["smem_bytes"]}
    macros.update({name: int(name in features) for name in FEATURES})
    with open(ENTRY, "rb") as f:
        source = params.c_struct("forward").encode() + f.read()
    opts = [f"--gpu-architecture=sm_{arch}", *OPTIONS, *(f"-D{k}={v}" for k, v in macros.items())]
    if verbose:
        opts.append("--ptxas-options=-v")
    err, prog = nvrtc.nvrtcCreateProgram(source, b"fwd.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    try:
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00").strip()
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return job, False, log, 0
        err, cubin_size = nvrtc.nvrtcGetCUBINSize(prog)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS or cubin_size == 0:
            return job, False, f"no CUBIN ({err}): {log}", 0
        cubin = b" " * cubin_size
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        return job, True, log, cubin_size
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def describe(job: tuple) -> str:
    arch, bf16, head_dim, head_dim_v, features, _ = job
    cfg = sm80_tiles.tile_config(head_dim, head_dim_v, arch)
    return (f"sm_{arch} {'bf16' if bf16 else 'f16 '} d={head_dim}/{head_dim_v} "
            f"tile={cfg['block_m']}x{cfg['block_n']}x{cfg['num_warps']}w s{cfg['stages']} smem={cfg['smem_bytes']} "
            f"[{','.join(features) or 'plain'}]")


def resources(log: str) -> str:
    """The ptxas register / spill summary of attn_fwd_kernel, condensed to one line."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return (f"regs={regs.group(1) if regs else '?'} stack={stack.group(1) if stack else '?'} "
            f"spill_st={spills.group(1) if spills else '?'} spill_ld={spills.group(2) if spills else '?'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="ptxas -v: registers and spills per combination")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--arch", type=int, action="append", help="restrict to these archs")
    parser.add_argument("--dim", type=int, action="append", help="restrict to these head dims (head_dim)")
    parser.add_argument("--plain-only", action="store_true", help="only the no-feature combination")
    args = parser.parse_args()

    archs = tuple(args.arch) if args.arch else ((80, 90) if args.quick else ARCHS)
    dims = HEAD_DIMS if not args.quick else ((64, 64), (128, 128), (192, 128), (256, 256))
    if args.dim:
        dims = tuple(d for d in dims if d[0] in args.dim)
    feature_sets = ((),) if args.plain_only else FEATURE_SETS
    jobs = [(arch, bf16, d, dv, feats, args.verbose)
            for arch, bf16, (d, dv), feats in itertools.product(archs, (True, False), dims, feature_sets)]

    failures = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for job, ok, log, cubin_bytes in pool.map(compile_one, jobs):
            if ok:
                extra = f" {resources(log)}" if args.verbose else ""
                print(f"ok   {describe(job)} cubin={cubin_bytes}{extra}", flush=True)
            else:
                failures += 1
                print(f"FAIL {describe(job)}\n{log}\n", flush=True)
    print(f"{len(jobs) - failures}/{len(jobs)} combinations compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
