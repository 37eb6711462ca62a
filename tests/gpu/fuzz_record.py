"""The GPU fuzz record (issue 16): the draws of tests/test_fuzz.py (`build_problem`), made from
seeded RNGs instead of hypothesis so that a run goes on past a failure and counts its cases, on
every GPU backend that accepts them (each nvrtc generation, cuDNN, and the reference on CuPy), each
against the brute-force definition in float64.

    python3 tests/gpu/fuzz_record.py --cases 500 --json FILE [--budget SECONDS]
    python3 tests/gpu/fuzz_record.py --replay DRAW          (one draw, every backend, raising)
    python3 tests/gpu/fuzz_record.py --keys 3000            (how many kernels the draws need; no GPU)

Draws go on until every backend has run `--cases` of them (a backend that has its count stops
running, so the draws after that serve the pickier ones) or the budget is spent.  Before running,
the kernels of every draw are compiled in parallel into the cache.  The record is the issue's
format: {"device", "date", "versions", "backends": {NAME: {"cases", "failures": [{"seed", "problem",
"error"}]}}}; a failure's "seed" is its draw number, which `--replay` takes."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import test_fuzz  # noqa: E402  (tests/test_fuzz.py: the draws and the checks)

SALT = 16            # the RNG stream of this record (issue 16)
DTYPES = ("bf16", "f16")


def draw(number: int):
    """Draw `number`: (descriptor, host arguments, value seed), the same on every machine."""
    rng = np.random.default_rng([SALT, number])

    def pick(options):
        options = list(options)
        return options[int(rng.integers(len(options)))]
    return test_fuzz.build_problem(pick, int(rng.integers(2**32)), DTYPES)


def summary(desc, args) -> str:
    """The draw in one line: the descriptor and its index arrays."""
    shown = {name: np.asarray(value).tolist() for name, value in args.items()
             if name in ("cu_seqlens_q", "cu_seqlens_kv", "seqlens_kv")}
    return f"{desc!r} {json.dumps(shown)}" if shown else repr(desc)


def warm(numbers, arch: int, target: int, workers: int) -> int:
    """Compile, in parallel, the kernels that draws `numbers` will run (each nvrtc generation until
    it has `target` draws, as `record` stops it); the number that failed to compile."""
    from attnplan.backends.nvrtc.warmup import compile_all, keys_for
    keys = keys_for((draw(n)[0] for n in numbers), arch, limit=target)
    print(f"warming {len(keys)} kernels", flush=True)
    return compile_all(keys, workers=workers)


def record(target: int, budget: float, device, log, only=None, start: int = 0) -> dict:
    """Draw until each backend has `target` cases or `budget` seconds pass; per backend
    {"cases", "failures"}."""
    started = time.monotonic()
    results: dict[str, dict] = {}
    number = start
    while time.monotonic() - started < budget:
        desc, args, seed = draw(number)
        names = [n for n in test_fuzz.accepting_backends(desc, device) if only is None or n in only]
        names = [n for n in names if results.setdefault(n, {"cases": 0, "failures": []})["cases"] < target]
        if names:
            exact = test_fuzz.brute(desc, args)
            for name in names:
                entry = results[name]
                entry["cases"] += 1
                try:
                    test_fuzz.check_backend(name, desc, args, seed, device, exact)
                except Exception as exc:                     # a wrong answer or a crash: recorded, go on
                    text = f"{type(exc).__name__}: {exc}"
                    entry["failures"].append({"seed": number, "problem": summary(desc, args), "error": text[:2000]})
                    print(f"FAIL draw {number} {name}: {text[:300]}", file=log, flush=True)
                    traceback.print_exc(file=log)
        number += 1
        if results and all(r["cases"] >= target for r in results.values()) and number > start + 50:
            break
        if number % 100 == 0:
            counts = {n: r["cases"] for n, r in results.items()}
            print(f"draw {number} {time.monotonic() - started:.0f}s {counts}", file=log, flush=True)
    for entry in results.values():
        entry["draws"] = number
    return results


def versions() -> dict:
    found = {}
    try:
        import cupy
        found["cupy"] = cupy.__version__
    except ImportError:
        pass
    try:
        import cudnn
        found["cudnn"] = str(cudnn.backend_version())
        found["cudnn_frontend"] = cudnn.__version__
    except Exception:  # noqa: BLE001  (no cuDNN: the record says so by its absence)
        pass
    from attnplan.backends.nvrtc.compiler import nvrtc_version
    found["nvrtc"] = nvrtc_version()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds of drawing")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--replay", type=int)
    parser.add_argument("--keys", type=int, help="count the kernels the first N draws need (sm_90)")
    parser.add_argument("--warm-draws", type=int, default=4000, help="draws whose kernels are compiled first")
    parser.add_argument("--start", type=int, default=0, help="the first draw (to continue a record)")
    parser.add_argument("--backends", default=None, help="comma-separated: run only these backends")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: every core)")
    options = parser.parse_args()
    from attnplan.device import default_device
    if options.keys:
        from attnplan.backends.nvrtc.warmup import keys_for
        keys = keys_for([draw(n)[0] for n in range(options.keys)], 90)
        print(f"{len(keys)} kernels for {options.keys} draws")
        return 0
    device = default_device()
    if device.kind != "cuda":
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    if options.replay is not None:
        desc, args, seed = draw(options.replay)
        print(summary(desc, args))
        print("ran:", test_fuzz.check(desc, args, seed, device))
        return 0
    only = set(options.backends.split(",")) if options.backends else None
    if only is None or any(name.startswith("nvrtc") for name in only):
        warm(range(options.warm_draws), device.arch, options.cases, options.workers)
    results = record(options.cases, options.budget, device, sys.stdout, only, options.start)
    name = f"{device.name} (cc {device.arch // 10}.{device.arch % 10})" if hasattr(device, "name") else str(device)
    document = {"device": name, "date": datetime.date.today().isoformat(), "versions": versions(),
                "command": " ".join(["python3", "tests/gpu/fuzz_record.py"] + sys.argv[1:]),
                "backends": results}
    text = json.dumps(document, indent=1)
    if options.json:
        options.json.write_text(text + "\n")
    print(text)
    short = [n for n, r in results.items() if r["cases"] < options.cases]
    failed = [n for n, r in results.items() if r["failures"]]
    print(f"short of {options.cases}: {short}; with failures: {failed}")
    return 1 if short or failed else 0


if __name__ == "__main__":
    sys.exit(main())
