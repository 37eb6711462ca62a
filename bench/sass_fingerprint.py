"""SASS fingerprints of the sm80 generation's kernels: registers, shared memory, stack, spills and the
opcode histogram of every kernel of every dispatch key of a compile matrix.  A refactor that should
not change the generated code must not change them (tests/test_sass_baseline.py is that guard).

    python bench/sass_fingerprint.py --matrix ci -o fingerprints.json
    python bench/sass_fingerprint.py --kernels-dir /tmp/kernels-base --matrix ci \\
        -o tests/data/sm80_sass_baseline.json          # the baseline, from a copy of kernels/
    python bench/sass_fingerprint.py --compare tests/data/sm80_sass_baseline.json   # exit 1 on any change

Output: {"_meta": {nvrtc, tools, matrix, kernel_tree}, key_name: {kernel_name: fingerprint}}.  The
SASS depends on the NVRTC release, so "_meta" says which one made it.  Compiles go through the disk
cache (ATTNPLAN_CACHE_DIR), keyed by the CUDA tree's hash, so two trees never share an entry.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from attnplan import AttentionDescriptor, PagedKV
from attnplan.backends.nvrtc import compiler
from attnplan.backends.nvrtc.warmup import keys_for
from attnplan.kernel_inspect import inspect_cubin, tool_versions

COMPILE_TEST = Path(__file__).resolve().parents[1] / "tests" / "test_kernel_compile.py"
META = "_meta"


def _compile_test():
    """tests/test_kernel_compile.py as a module: its feature set and its compile matrix."""
    spec = importlib.util.spec_from_file_location("_attnplan_compile_matrix", COMPILE_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _problem(head_dim: int, dtype: str = "bf16", **fields) -> AttentionDescriptor:
    return AttentionDescriptor(batch=2, seqlen_q=256, seqlen_kv=256, heads_q=4, heads_kv=2, head_dim=head_dim,
                               dtype=dtype, **fields)


def ci_keys() -> list:
    """Every code path once, cheaply: for sm_90 (which the sm80 generation compiles as sm_90) the
    forward plain, with every feature, and paged; the backward plain, with every feature, and
    deterministic; and the forward on sm_80 and sm_89.  The sm_80 / sm_89 keys are among
    test_kernel_compile's, so CI compiles them once."""
    everything = _compile_test().EVERYTHING        # window, sinks, sink logits, ALiBi, softcap, dropout, varlen
    by_arch = {90: [_problem(64),
                    _problem(128, "f16", causal=True, **everything),
                    _problem(128, paged=PagedKV(64, 4)),
                    _problem(128, direction="backward"),
                    _problem(64, "f16", causal=True, direction="backward", **everything),
                    _problem(128, direction="backward", deterministic=True)],
               80: [_problem(128)], 89: [_problem(128)]}
    keys = []
    for arch, descs in by_arch.items():
        found = [k for k in keys_for(descs, arch) if k.generation == "sm80"]     # the sm80 generation's matrix
        if len(found) != len(descs):        # keys_for drops what the backend rejects: say so, never shrink
            raise ValueError(f"the ci matrix for sm_{arch} has {len(descs)} problems but {len(found)} keys")
        keys += found
    return keys


def full_keys() -> list:
    """Every key test_kernel_compile compiles (taken from its test, so the two never drift), and the
    ci keys it lacks (sm_90, the deterministic backward)."""
    module, keys = _compile_test(), []
    module.compile_all = lambda found, **_: keys.extend(found) or 0     # collect instead of compiling
    module.test_common_cells_compile_for_every_arch()
    return list({k.name: k for k in keys + ci_keys()}.values())


MATRICES = {"ci": ci_keys, "full": full_keys}


def use_kernels_dir(path) -> None:
    """Compile the CUDA sources below `path` instead of the installed ones (None: the installed)."""
    if path is not None:
        compiler.kernels_dir = lambda: Path(path).resolve()
        compiler._tree_hash.cache_clear()


def _fingerprint(key) -> dict:
    cubin, _ = compiler.compile_key(key)
    return {k.name: k.fingerprint() for k in inspect_cubin(cubin)}


def fingerprints(keys, kernels_dir=None, workers=None) -> dict:
    """{key name: {kernel name: fingerprint}} (no "_meta"), compiled in parallel."""
    use_kernels_dir(kernels_dir)
    workers = workers or max(1, min(len(keys), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, initializer=use_kernels_dir, initargs=(kernels_dir,)) as pool:
        return dict(sorted(zip((k.name for k in keys), pool.map(_fingerprint, keys))))


def meta(matrix: str) -> dict:
    """What made the fingerprints (call after use_kernels_dir)."""
    return {"nvrtc": compiler.nvrtc_version(), "tools": tool_versions(), "matrix": matrix,
            "kernel_tree": compiler._tree_hash(str(compiler.kernels_dir()))}


def _counts(fingerprint: dict) -> dict:
    """One flat {field or opcode: number} (fields are lower case, opcodes upper case)."""
    return {**{f: v for f, v in fingerprint.items() if f != "opcodes"}, **fingerprint.get("opcodes", {})}


def differences(baseline: dict, current: dict) -> list[str]:
    """Every difference of `current` from `baseline`, one line each ("_meta" is not compared)."""
    lines = []
    for key in sorted((baseline.keys() | current.keys()) - {META}):
        was, now = baseline.get(key), current.get(key)
        if was is None or now is None:
            lines.append(f"{key}: {'new' if was is None else 'missing'} key")
            continue
        for kernel in sorted(was.keys() | now.keys()):
            if kernel not in was or kernel not in now:
                lines.append(f"{key}: {kernel}: {'new' if kernel not in was else 'missing'} kernel")
                continue
            old, new = _counts(was[kernel]), _counts(now[kernel])
            lines += [f"{key}: {kernel}: {name} {old.get(name, 0)} -> {new.get(name, 0)}"
                      for name in sorted(old.keys() | new.keys(), key=lambda n: (n.isupper(), n))
                      if old.get(name, 0) != new.get(name, 0)]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", choices=sorted(MATRICES), default=None,
                        help="default: the baseline's with --compare, else ci")
    parser.add_argument("--kernels-dir", default=None, help="CUDA sources to compile (default: the installed kernels/)")
    parser.add_argument("--compare", default=None, metavar="BASELINE.json", help="print every difference, exit 1 if any")
    parser.add_argument("-o", "--output", default=None, help="write the fingerprints here (default: stdout, "
                                                                 "unless --compare)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    baseline = json.loads(Path(args.compare).read_text()) if args.compare else {}
    matrix = args.matrix or baseline.get(META, {}).get("matrix", "ci")
    compiler.nvrtc_version()                  # NvrtcUnavailable, before the matrix asks the compile test
    current = fingerprints(MATRICES[matrix](), args.kernels_dir, args.workers)
    result = {META: meta(matrix), **current}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
        print(f"{len(current)} keys, {sum(map(len, current.values()))} kernels -> {args.output}", file=sys.stderr)
    elif not args.compare:
        print(json.dumps(result, indent=1))
    if not args.compare:
        return 0
    made_with = baseline.get(META, {}).get("nvrtc")
    if made_with != result[META]["nvrtc"]:
        print(f"note: the baseline was made with NVRTC {made_with}, this is {result[META]['nvrtc']}: "
              "the SASS may differ for that alone", file=sys.stderr)
    found = differences(baseline, current)
    for line in found:
        print(line)
    print(f"{len(found)} differences in {len(current)} keys ({matrix} matrix)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
