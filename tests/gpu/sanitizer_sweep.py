"""A small sweep of every bespoke kernel for compute-sanitizer (memcheck, racecheck, synccheck,
initcheck): the sm80 forward, the sm80 backward (atomic and deterministic dQ), the sm90a forward, and
the device-side index check (kernels/common/index_check.cu) that every varlen or paged GPU run
launches first.  Every feature on tiny shapes, one plan.run per case.

    python3 tests/gpu/sanitizer_sweep.py --list          cases, and which backend and kernel runs each
                                                         (no GPU needed: explain() on a described sm_90)
    python3 tests/gpu/sanitizer_sweep.py --warm          compile every kernel in parallel (no GPU needed),
                                                         then, on a GPU, run the cases without a sanitizer
    compute-sanitizer --tool memcheck --error-exitcode 3 --kernel-name kns=attn_ \\
        python3 tests/gpu/sanitizer_sweep.py             the sweep (tests/gpu/sanitizers.sh runs all four)
    python3 tests/gpu/sanitizer_sweep.py --canary TOOL   one deliberately broken kernel named attn_*, which
                                                         TOOL must report (proof that the filter and the tool
                                                         see kernels loaded the way ours are)
    python3 tests/gpu/sanitizer_sweep.py --summarise DIR [DIR ...] --output FILE
                                                         the result JSON from sanitizers.sh's logs

Options of the sweep: -k REGEX (case names), --families sm80-fwd,sm80-bwd,sm80-bwd-det,sm90a-fwd,
--sm90a-rungs default,persistent,... (each sm90a case once per rung; "default" is the planner's rung;
env SANITIZER_SM90A_RUNGS), --pool (keep CuPy's memory pool; by default every array is its own
cudaMalloc, so that memcheck sees each array's bounds and initcheck sees fresh memory).

Each case: inputs made on the host (random_inputs for the CPU; a backward's out and LSE from the
float64 reference on the CPU) and copied with cupy.asarray; outputs poisoned with NaN, also made on
the host; one run; synchronize; plan.check() (the index check found nothing); every output element
read back raw and checked written (no NaN; out and gradients finite; LSE -inf only for rows that
see no key).  No CuPy kernel runs in the sweep: copies and memsets only.  A case the backend
declines (NoPlanError) is printed as skipped with its reason.  The last lines are machine readable:
`KERNELS [...]` (distinct kernels launched: SKU names and attn_index_check_sm<arch>) and
`SWEEP {...}` (counts).  Exit status 1 if any output was not written or a case raised.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Optional

import attrs
import numpy as np

from attnplan import AttentionDescriptor, NoPlanError, PagedKV, Plan, explain
from attnplan.arguments import lse_shape
from attnplan.device import Device, default_device
from attnplan.dtypes import HOST_DTYPES, lse_dtype
from attnplan.problems import random_inputs

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
FAMILIES = {"sm80-fwd": "nvrtc.sm80", "sm80-bwd": "nvrtc.sm80", "sm80-bwd-det": "nvrtc.sm80",
            "sm90a-fwd": "nvrtc.sm90a"}
RUNG_VARIABLE = "ATTNPLAN_SM90A_RUNG"      # backends/nvrtc/sm90a: read at every dispatch
INDEX_CHECK = "attn_index_check"           # backends/index_guard.py ENTRY


# -- the cases -------------------------------------------------------------------------------------

@attrs.frozen
class Case:
    family: str
    name: str
    desc: AttentionDescriptor
    # Per-sequence lengths instead of random_inputs' (empty sequences): {"q": [...], "kv": [...]}
    lengths: Optional[tuple] = None
    rung: Optional[str] = None              # sm90a: the rung named by $ATTNPLAN_SM90A_RUNG (None: the planner's)

    @property
    def backend(self) -> str:
        return FAMILIES[self.family]

    @property
    def full_name(self) -> str:
        return f"{self.family}/{self.name}" + (f"@{self.rung}" if self.rung else "")

    @property
    def guarded(self) -> bool:
        """Whether a GPU run launches the index check first (varlen or paged index arguments)."""
        return self.desc.varlen or self.desc.paged is not None


# q shorter than kv, neither a multiple of any tile; batch 2, 4 heads
BASE = dict(batch=2, seqlen_q=113, seqlen_kv=200, heads_q=4, heads_kv=4, head_dim=64, dtype="bf16",
            return_lse=True)
EVERYTHING = dict(causal=True, window=(50, 0), sink_tokens=3, alibi=True, softcap=5.0, sink_logits=True,
                  heads_q=8, heads_kv=2)


def _d(**fields) -> AttentionDescriptor:
    return AttentionDescriptor(**{**BASE, **fields})


def _bwd(**fields) -> AttentionDescriptor:
    return _d(direction="backward", return_lse=False, **fields)


def _lengths(q, kv) -> tuple:
    return (("q", tuple(q) if q is not None else None), ("kv", tuple(kv)))


# Shapes and features both directions share (the sm80 forward takes all of them).
SHAPES = {
    "len1x1": dict(seqlen_q=1, seqlen_kv=1),
    "len17x17-causal": dict(seqlen_q=17, seqlen_kv=17, causal=True),
    "len1x200-causal": dict(seqlen_q=1, seqlen_kv=200, causal=True),
    "len200x17-causal": dict(seqlen_q=200, seqlen_kv=17, causal=True),          # bottom-right: early rows see no key
    "len200x17-top-left": dict(seqlen_q=200, seqlen_kv=17, causal=True, causal_alignment="top_left"),
    "top-left": dict(causal=True, causal_alignment="top_left"),
}
FEATURES = {
    "window-causal": dict(causal=True, window=(48, 0)),
    "window-two-sided": dict(window=(32, 40)),
    "window-sinks": dict(causal=True, window=(40, 0), sink_tokens=5),
    "window-sinks-two-sided": dict(window=(40, 20), sink_tokens=70),
    "sink-logits": dict(causal=True, window=(16, 0), sink_logits=True),
    "alibi-causal": dict(causal=True, alibi=True),
    "alibi": dict(alibi=True),
    "softcap": dict(softcap=3.75),
    "gqa4-causal": dict(heads_q=8, heads_kv=2, causal=True),
    "mqa8": dict(heads_q=8, heads_kv=1),
}
DROPOUT = {
    "dropout": dict(dropout_p=0.17),
    "dropout-causal": dict(causal=True, dropout_p=0.3),
}


def sm80_forward_cases() -> list[Case]:
    f = "sm80-fwd"
    cases = [Case(f, f"{dtype}-d{hd}{'-causal' if causal else ''}", _d(dtype=dtype, head_dim=hd, causal=causal))
             for dtype, hd, causal in (("bf16", 64, True), ("f16", 64, False), ("bf16", 128, False),
                                       ("f16", 128, True), ("bf16", 256, True), ("f16", 256, False),
                                       ("bf16", 72, True), ("f16", 96, True))]
    cases += [Case(f, name, _d(**extra)) for name, extra in SHAPES.items() if name != "len17x17-causal"]
    cases += [Case(f, name, _d(**extra)) for name, extra in {**FEATURES, **DROPOUT}.items()
              if name not in ("alibi", "window-two-sided", "dropout")]
    cases += [
        Case(f, "dv-differs-d192x128", _d(head_dim=192, head_dim_v=128, causal=True)),
        Case(f, "everything", _d(**EVERYTHING, dropout_p=0.1)),
        Case(f, "everything-d128-f16", _d(**EVERYTHING, head_dim=128, dtype="f16")),
        Case(f, "bhsd-causal", _d(layout="bhsd", causal=True)),
        Case(f, "no-lse", _d(return_lse=False, causal=True)),
        Case(f, "varlen-causal-gqa4", _d(layout="thd", batch=3, heads_q=8, heads_kv=2, causal=True)),
        Case(f, "varlen-window-f16-d128", _d(layout="thd", batch=3, dtype="f16", head_dim=128, causal=True,
                                             window=(33, 0))),
        Case(f, "varlen-empty-seqs", _d(layout="thd", batch=4, causal=True),
             _lengths([113, 0, 40, 7], [200, 31, 0, 150])),
        Case(f, "varlen-everything", _d(layout="thd", batch=3, **EVERYTHING, dropout_p=0.1)),
        Case(f, "paged16-causal", _d(seqlen_q=64, paged=PagedKV(16, 13), causal=True)),
        Case(f, "paged64-decode-gqa4", _d(batch=3, seqlen_q=1, paged=PagedKV(64, 4), heads_q=8, heads_kv=2)),
        Case(f, "paged32-chunked-prefill-d128", _d(layout="thd", batch=3, seqlen_q=40, paged=PagedKV(32, 7),
                                                   head_dim=128, causal=True)),
        Case(f, "paged16-empty-seq", _d(batch=3, seqlen_q=17, paged=PagedKV(16, 13), causal=True),
             _lengths(None, [200, 0, 33])),
    ]
    return cases


def sm80_backward_cases() -> list[Case]:
    f = "sm80-bwd"
    cases = [Case(f, f"{dtype}-d{hd}{'-causal' if causal else ''}", _bwd(dtype=dtype, head_dim=hd, causal=causal))
             for dtype, hd, causal in (("bf16", 64, False), ("f16", 64, True), ("bf16", 128, True),
                                       ("bf16", 256, True), ("f16", 72, False))]
    for name in ("len1x1", "len1x200-causal", "len200x17-causal", "len200x17-top-left"):
        cases.append(Case(f, name, _bwd(**SHAPES[name])))
    for name in ("window-causal", "window-sinks-two-sided", "sink-logits", "alibi-causal", "softcap", "gqa4-causal",
                 "dropout-causal"):
        cases.append(Case(f, name, _bwd(**{**FEATURES, **DROPOUT}[name])))
    cases += [
        Case(f, "dv-differs-d64x128", _bwd(head_dim=64, head_dim_v=128, causal=True)),
        Case(f, "everything", _bwd(**EVERYTHING, dropout_p=0.1)),
        Case(f, "varlen-causal-gqa4", _bwd(layout="thd", batch=3, heads_q=8, heads_kv=2, causal=True)),
        Case(f, "varlen-dropout-sink-logits", _bwd(layout="thd", batch=3, causal=True, dropout_p=0.2, sink_logits=True)),
        Case(f, "varlen-empty-seqs", _bwd(layout="thd", batch=4, causal=True),
             _lengths([113, 0, 40, 7], [200, 31, 0, 150])),
    ]
    d = "sm80-bwd-det"
    cases += [
        Case(d, "det-d64", _bwd(deterministic=True)),
        Case(d, "det-d128-causal-gqa4", _bwd(deterministic=True, head_dim=128, causal=True, heads_q=8, heads_kv=2)),
        Case(d, "det-d256-f16-causal", _bwd(deterministic=True, head_dim=256, dtype="f16", causal=True)),
        Case(d, "det-d72-q-longer", _bwd(deterministic=True, head_dim=72, causal=True, seqlen_q=200, seqlen_kv=113)),
        Case(d, "det-everything", _bwd(deterministic=True, **EVERYTHING, dropout_p=0.1)),
        Case(d, "det-varlen-mqa8-d128", _bwd(deterministic=True, layout="thd", batch=3, heads_q=8, heads_kv=1,
                                             head_dim=128)),
        Case(d, "det-varlen-empty-seqs", _bwd(deterministic=True, layout="thd", batch=4, causal=True, window=(40, 0)),
             _lengths([113, 0, 40, 7], [200, 31, 0, 150])),
    ]
    return cases


def sm90a_forward_cases(rungs=(None,)) -> list[Case]:
    f = "sm90a-fwd"
    base = []
    base += [Case(f, f"{dtype}-d{hd}{'-causal' if causal else ''}", _d(dtype=dtype, head_dim=hd, causal=causal))
             for dtype, hd, causal in (("bf16", 64, True), ("f16", 64, False), ("bf16", 128, False),
                                       ("f16", 128, True), ("bf16", 256, True), ("f16", 256, False),
                                       ("bf16", 96, True))]
    base += [
        Case(f, "d192x128-causal", _d(head_dim=192, head_dim_v=128, causal=True)),
        Case(f, "len1x1-d128", _d(seqlen_q=1, seqlen_kv=1, head_dim=128)),
        Case(f, "len1x200-d128", _d(seqlen_q=1, head_dim=128)),
        Case(f, "len200x17-causal-d128", _d(seqlen_q=200, seqlen_kv=17, causal=True, head_dim=128)),
        Case(f, "len200x17-top-left-d128", _d(seqlen_q=200, seqlen_kv=17, causal=True, causal_alignment="top_left",
                                              head_dim=128)),
    ]
    for name in ("window-causal", "window-sinks-two-sided", "sink-logits", "alibi", "softcap", "gqa4-causal"):
        base.append(Case(f, f"{name}-d128", _d(head_dim=128, **FEATURES[name])))
    base += [
        Case(f, "everything-d64", _d(**EVERYTHING)),                       # d=64: three consumer warpgroups
        Case(f, "everything-d256-f16", _d(**EVERYTHING, head_dim=256, dtype="f16")),
        Case(f, "alibi-d256-causal", _d(head_dim=256, causal=True, alibi=True)),   # wide output with ALiBi: rung tma
        Case(f, "bhsd-causal-gqa4-d128", _d(layout="bhsd", heads_q=8, heads_kv=2, causal=True, head_dim=128)),
        Case(f, "varlen-causal-gqa4-d128", _d(layout="thd", batch=3, heads_q=8, heads_kv=2, causal=True, head_dim=128)),
        Case(f, "varlen-everything-d64", _d(layout="thd", batch=3, **EVERYTHING)),
        Case(f, "varlen-empty-seqs-d128", _d(layout="thd", batch=4, causal=True, head_dim=128),
             _lengths([113, 0, 40, 7], [200, 31, 0, 150])),
        Case(f, "paged16-causal-d128", _d(seqlen_q=64, paged=PagedKV(16, 13), causal=True, head_dim=128)),
        Case(f, "paged64-decode-gqa4-d128", _d(batch=3, seqlen_q=1, paged=PagedKV(64, 4), heads_q=8, heads_kv=2,
                                               head_dim=128)),
        Case(f, "paged32-chunked-prefill-d64", _d(layout="thd", batch=3, seqlen_q=40, paged=PagedKV(32, 7),
                                                  causal=True)),
        Case(f, "paged64-everything-d128", _d(paged=PagedKV(64, 4), head_dim=128, **EVERYTHING)),
        Case(f, "paged128-d256", _d(paged=PagedKV(128, 2), head_dim=256)),
        Case(f, "paged16-empty-seq-d128", _d(batch=3, seqlen_q=17, paged=PagedKV(16, 13), causal=True, head_dim=128),
             _lengths(None, [200, 0, 33])),
    ]
    return [attrs.evolve(case, rung=rung) for rung in rungs for case in base]


def all_cases(rungs=(None,)) -> list[Case]:
    return sm80_forward_cases() + sm80_backward_cases() + sm90a_forward_cases(rungs)


def parse_rungs(text: str) -> tuple:
    names = [n.strip() for n in (text or "default").split(",") if n.strip()] or ["default"]
    return tuple(None if n == "default" else n for n in dict.fromkeys(names))


def select(cases: list[Case], pattern: Optional[str], families: Optional[str]) -> list[Case]:
    if families:
        wanted = {f.strip() for f in families.split(",") if f.strip()}
        unknown = wanted - set(FAMILIES)
        if unknown:
            raise SystemExit(f"unknown families {sorted(unknown)}: the families are {', '.join(FAMILIES)}")
        cases = [c for c in cases if c.family in wanted]
    if pattern:
        cases = [c for c in cases if re.search(pattern, c.full_name)]
    return cases


@contextlib.contextmanager
def rung_named(rung: Optional[str]):
    """$ATTNPLAN_SM90A_RUNG = rung for the block (None: as it was)."""
    if rung is None:
        yield
        return
    before = os.environ.get(RUNG_VARIABLE)
    os.environ[RUNG_VARIABLE] = rung
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RUNG_VARIABLE, None)
        else:
            os.environ[RUNG_VARIABLE] = before


def verdict(case: Case, device: Device) -> tuple[bool, str]:
    """(accepted, kernel name or the reasons it is declined) of the case's backend on `device`."""
    with rung_named(case.rung):
        try:
            verdicts = explain(case.desc, device, prefer=case.backend, restrict=True)
        except ValueError as exc:                 # e.g. a rung name the generation does not know
            return False, str(exc)
    mine = verdicts.of(case.backend)
    if verdicts.choice == case.backend:
        return True, mine.kernel
    return False, "; ".join(mine.reasons) or "not chosen"


# -- inputs, made on the host ---------------------------------------------------------------------

def seed_of(case: Case) -> int:
    return zlib.crc32(case.full_name.encode()) % 10_000


def _cumulative(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def host_inputs(case: Case) -> dict:
    """plan.run's keyword arguments as NumPy arrays (and the dropout seed)."""
    desc = case.desc
    args = random_inputs(desc, Device.cpu(), seed=seed_of(case))
    if case.lengths is not None:
        args = _with_lengths(desc, args, dict(case.lengths), np.random.default_rng(seed_of(case) + 1))
    if desc.direction == "backward":
        forward = desc.replace(direction="forward", return_lse=True, deterministic=False)
        reference = Plan.select(forward, Device.cpu(), prefer="reference", restrict=True)
        out, lse = reference.run(**{k: v for k, v in args.items() if k != "dout"})
        args["out"], args["lse"] = np.ascontiguousarray(out), np.ascontiguousarray(lse)
    return args


def _with_lengths(desc: AttentionDescriptor, args: dict, lengths: dict, rng) -> dict:
    """random_inputs' arguments with the given per-sequence lengths (zeros allowed)."""
    def tensor(shape, dtype):
        return rng.standard_normal(shape, dtype=np.float32).astype(HOST_DTYPES[dtype])

    q_lengths, kv_lengths = lengths.get("q"), lengths["kv"]
    assert len(kv_lengths) == desc.batch and max(kv_lengths) <= desc.seqlen_kv, (desc, lengths)
    if q_lengths is not None:
        assert desc.layout == "thd" and len(q_lengths) == desc.batch and max(q_lengths) <= desc.seqlen_q
        args["cu_seqlens_q"] = _cumulative(q_lengths)
        rows = (int(sum(q_lengths)), desc.heads_q)
        args["q"] = tensor(rows + (desc.head_dim,), desc.dtype)
        if "dout" in args:
            args["dout"] = tensor(rows + (desc.head_dim_v,), desc.out_dtype)
    if desc.paged is not None:
        args["seqlens_kv"] = np.asarray(kv_lengths, dtype=np.int32)
    else:
        assert desc.layout == "thd"
        args["cu_seqlens_kv"] = _cumulative(kv_lengths)
        rows = (int(sum(kv_lengths)), desc.heads_kv)
        args["k"] = tensor(rows + (desc.head_dim,), desc.dtype)
        args["v"] = tensor(rows + (desc.head_dim_v,), desc.dtype)
    return args


def to_device(value):
    """A host array as device memory by one copy (bf16 as its raw bits in an attnplan Tensor)."""
    import cupy
    from attnplan.interop import Tensor
    if not isinstance(value, np.ndarray):
        return value
    value = np.ascontiguousarray(value)
    if value.dtype == HOST_DTYPES["bf16"]:
        return Tensor(cupy.asarray(value.view(np.uint16)), "bf16", "cupy", None)
    return cupy.asarray(value)


def poisoned(shape, dtype: str):
    """NaN-filled device storage of `dtype`, made on the host and copied (no fill kernel)."""
    host = np.full(shape, np.nan, dtype=np.float32).astype(HOST_DTYPES[dtype])
    return to_device(host)


def fetched(value, dtype: str) -> np.ndarray:
    """Device storage as float64 on the host: a raw copy, converted on the host."""
    import cupy
    data = getattr(value, "data", value) if not isinstance(value, cupy.ndarray) else value
    host = cupy.asnumpy(data)
    if dtype == "bf16":
        host = host.view(HOST_DTYPES["bf16"]) if host.dtype == np.uint16 else host
    return host.astype(np.float64)


def unwritten(name: str, values: np.ndarray) -> str:
    """Why `values` are not all written ("" when they are): NaN anywhere, and for everything but the
    LSE any infinity (the LSE of a row that sees no key is -inf by docs/semantics.md)."""
    nan = int(np.isnan(values).sum())
    bad_inf = int(np.isposinf(values).sum()) if name == "lse" else int(np.isinf(values).sum())
    if not nan and not bad_inf:
        return ""
    return f"{name}: {nan} NaN, {bad_inf} inf of {values.size}"


# -- one case --------------------------------------------------------------------------------------

def run_case(case: Case, device: Device) -> dict:
    import cupy
    desc = case.desc
    began = time.perf_counter()
    record = {"case": case.full_name, "family": case.family, "backend": case.backend}
    with rung_named(case.rung):
        try:
            plan = Plan.select(desc, device, prefer=case.backend, restrict=True)
        except NoPlanError as exc:
            mine = next((v for v in exc.verdicts if v.backend == case.backend), None)
            return {**record, "skipped": "; ".join(mine.reasons) if mine is not None and mine.reasons else str(exc)}
        record["kernel"] = plan.sku.kernel
        record["guarded"] = not plan.device_check_reason
        host = host_inputs(case)
        args = {name: to_device(value) for name, value in host.items()}
        q_rows = host["q"].shape[:-1]
        if desc.direction == "forward":
            outputs = {"out": (poisoned(q_rows + (desc.head_dim_v,), desc.out_dtype), desc.out_dtype)}
            if desc.return_lse:
                outputs["lse"] = (poisoned(lse_shape(desc, host["q"].shape[0]), lse_dtype(desc.dtype)),
                                  lse_dtype(desc.dtype))
            plan.run(**{name: value for name, (value, _) in outputs.items()}, **args)
        else:
            outputs = {"dq": (poisoned(host["q"].shape, desc.dtype), desc.dtype),
                       "dk": (poisoned(host["k"].shape, desc.dtype), desc.dtype),
                       "dv": (poisoned(host["v"].shape, desc.dtype), desc.dtype)}
            if desc.sink_logits:
                outputs["dsink_logits"] = (poisoned((desc.heads_q,), "f32"), "f32")
            plan.run(**{name: value for name, (value, _) in outputs.items()}, **args)   # into the poisoned gradients
        cupy.cuda.Device().synchronize()
        plan.check()
    problems = [p for p in (unwritten(name, fetched(value, dtype)) for name, (value, dtype) in outputs.items()) if p]
    return {**record, "written": not problems, "problems": problems, "seconds": time.perf_counter() - began}


def sweep(cases: list[Case], use_pool: bool) -> int:
    device = default_device()
    if device.kind != "cuda":
        print("no CUDA device: nothing to run (--list and --warm work without one)", flush=True)
        return 2
    import cupy
    if not use_pool:
        cupy.cuda.set_allocator(None)          # every array its own cudaMalloc: exact bounds, fresh memory
    print(f"device: {device}; {len(cases)} cases; CuPy pool {'on' if use_pool else 'off'}", flush=True)
    kernels, counts = set(), {family: {"ran": 0, "skipped": 0, "failed": 0} for family in FAMILIES}
    failed = 0
    for case in cases:
        try:
            result = run_case(case, device)
        except Exception as exc:             # a launch error, a fault the index check found, ...
            failed += 1
            counts[case.family]["failed"] += 1
            where = " | ".join(line.strip() for line in traceback.format_exc().strip().splitlines()[-4:-1])
            message = str(exc).replace("\n", " | ")[:400]
            print(f"{case.full_name}: FAILED {type(exc).__name__}: {message} | {where}", flush=True)
            continue
        if "skipped" in result:
            counts[case.family]["skipped"] += 1
            print(f"{case.full_name}: skipped ({result['skipped']})", flush=True)
            continue
        kernels.add(result["kernel"])
        if result["guarded"]:
            kernels.add(f"{INDEX_CHECK}_sm{device.arch}")
        guard = f" + {INDEX_CHECK}" if result["guarded"] else ""
        if result["written"]:
            counts[case.family]["ran"] += 1
            state = "outputs all written"
        else:
            failed += 1
            counts[case.family]["failed"] += 1
            state = "NOT ALL WRITTEN: " + "; ".join(result["problems"])
        print(f"{case.full_name}: {result['kernel']}{guard} {state} ({result['seconds']:.1f} s)", flush=True)
    print("KERNELS " + json.dumps(sorted(kernels)), flush=True)
    totals = {key: sum(c[key] for c in counts.values()) for key in ("ran", "skipped", "failed")}
    print("SWEEP " + json.dumps({"cases": len(cases), **totals, "families": counts}), flush=True)
    return 1 if failed else 0


# -- --list and --warm -------------------------------------------------------------------------------

def described_device(arch: int) -> Device:
    """The GPU here, else a described sm_`arch` (explain and the compile need no GPU)."""
    present = default_device()
    return present if present.kind == "cuda" else Device.cuda(arch=arch)


def list_cases(cases: list[Case], arch: int) -> int:
    device = described_device(arch)
    print(f"cases on {device} (explain, restricted to each family's backend):")
    counts = {family: [0, 0] for family in FAMILIES}
    guarded = 0
    width = max(len(c.full_name) for c in cases) if cases else 0
    for case in cases:
        accepted, text = verdict(case, device)
        counts[case.family][0 if accepted else 1] += 1
        guarded += accepted and case.guarded
        guard = f" + {INDEX_CHECK}" if accepted and case.guarded else ""
        shown = f"{case.backend}  {text}{guard}" if accepted else f"skipped ({case.backend}: {text})"
        print(f"  {case.full_name:<{width}}  {shown}")
    for family, (taken, declined) in counts.items():
        print(f"{family}: {taken} cases ({declined} declined)")
    print(f"index check: {guarded} cases launch {INDEX_CHECK} first")
    print(f"total: {sum(t for t, _ in counts.values())} cases run, {sum(d for _, d in counts.values())} declined")
    return 0


def compile_cases(cases: list[Case], arch: int) -> int:
    """Compile every kernel the accepted cases use into the kernel cache, in parallel (no GPU needed)."""
    from attnplan import registry
    from attnplan.backends import index_guard
    from attnplan.backends.nvrtc.warmup import compile_all
    device = described_device(arch)
    keys = {}
    for case in cases:
        accepted, _ = verdict(case, device)
        if accepted:
            with rung_named(case.rung):
                key = registry.get(case.backend).dispatch_key(case.desc, device)
            keys[key.name] = key
    began = time.perf_counter()
    failures = compile_all(list(keys.values()))
    if any(case.guarded for case in cases):
        index_guard.cubin(arch)
    print(f"compiled {len(keys) - failures} of {len(keys)} kernels (and {INDEX_CHECK}) in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    return 1 if failures else 0


# -- --canary: a planted fault per tool ------------------------------------------------------------

CANARY_SOURCE = r"""
struct CanaryParams { int* out; int* scratch; int n; };
extern "C" __global__ void attn_sanitizer_canary(const CanaryParams p) {
#if CANARY_MEMCHECK
  if (threadIdx.x == 0) p.scratch[p.n] = 1;              // past the end of a 16-byte allocation
#elif CANARY_RACECHECK
  __shared__ volatile int cell;
  cell = threadIdx.x;                                    // every thread of both warps, no barrier
  p.out[threadIdx.x] = cell;
#elif CANARY_SYNCCHECK
  if (threadIdx.x < 2) __syncwarp(2u);                   // lane 0 is not in the mask it passes
  p.out[threadIdx.x] = threadIdx.x;
#elif CANARY_INITCHECK
  p.out[threadIdx.x] = p.scratch[threadIdx.x];           // scratch was never written
#endif
}
"""


class CanaryParams(ctypes.Structure):
    _fields_ = [("out", ctypes.c_void_p), ("scratch", ctypes.c_void_p), ("n", ctypes.c_int)]


def canary(tool: str) -> int:
    """Launch one kernel named attn_* (compiled by NVRTC to a cubin and loaded like ours) with a fault
    `tool` reports; exit 0 once it ran (the sanitizer's summary says whether it was seen)."""
    if tool not in TOOLS:
        raise SystemExit(f"--canary takes one of {', '.join(TOOLS)}")
    device = default_device()
    if device.kind != "cuda":
        print("no CUDA device", flush=True)
        return 2
    import cupy
    from attnplan.backends.nvrtc import compiler, launcher
    options = list(compiler.BASE_OPTIONS) + [f"--gpu-architecture=sm_{device.arch}", f"-DCANARY_{tool.upper()}=1"]
    cubin, _ = compiler.compile_source(CANARY_SOURCE, "attn_sanitizer_canary", options)
    kernel = launcher.load(cubin, "attn_sanitizer_canary", 0, 64, device.index)
    out = cupy.zeros(64, dtype=cupy.int32)                              # a memset: initialized
    scratch = cupy.cuda.runtime.malloc(16 if tool == "memcheck" else 256)   # raw cudaMalloc, never written
    try:
        launcher.launch(kernel, (1, 1, 1), CanaryParams(out.data.ptr, scratch, 8), 0)
        cupy.cuda.runtime.deviceSynchronize()
        print(f"CANARY {tool} launched", flush=True)
    except Exception as exc:          # memcheck stops the faulting kernel: the launch reports an error
        print(f"CANARY {tool} launched; the launch reported {type(exc).__name__}: {exc}", flush=True)
    return 0


# -- --summarise: the result JSON ------------------------------------------------------------------

ERROR_SUMMARY = re.compile(r"ERROR SUMMARY:\s*([\d,]+)\s+errors?")
RACECHECK_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*([\d,]+)\s+hazards?\s+displayed\s*"
                               r"\(\s*([\d,]+)\s+errors?,\s*([\d,]+)\s+warnings?\s*\)")
MACHINE_LINE = re.compile(r"^(KERNELS|SWEEP) (.*)$", re.M)
CASE_LINE = re.compile(r"^\S+: (attn_\S+)( \+ " + INDEX_CHECK + r")? outputs all written", re.M)
TROUBLE = re.compile(r"(Internal Sanitizer Error.*|Target application terminated.*|Segmentation fault.*|core dumped.*"
                     r"|(?<==== )Error: .*|out of memory.*)")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _status_file(path: Path) -> dict:
    """rc=N seconds=S timeout=T (written by sanitizers.sh) as a dict of ints."""
    if not path.exists():
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", path.read_text())}


def _machine_lines(text: str, notes: list) -> dict:
    found = {}
    for key, value in MACHINE_LINE.findall(text):
        try:
            found[key] = json.loads(value)
        except ValueError:
            notes.append(f"unreadable {key} line")
    return found


def read_log(log: Path, status: dict) -> dict:
    """What one compute-sanitizer run says: errors (None when it cannot be told), the kernels the sweep
    launched, its counts, and notes on anything that keeps the zero from counting."""
    text = log.read_text(errors="replace")
    notes, result = [], {"log": log.name}
    rc = status.get("rc")
    result.update(rc=rc, seconds=status.get("seconds"), timeout_s=status.get("timeout"))
    errors = [_number(n) for n in ERROR_SUMMARY.findall(text)]
    races = [tuple(_number(n) for n in m) for m in RACECHECK_SUMMARY.findall(text)]
    if races:
        result["hazards"] = sum(r[0] for r in races)
        result["warnings"] = sum(r[2] for r in races)
    counted = max(sum(errors), sum(r[1] for r in races)) if (errors or races) else None
    if rc in (124, 137):
        notes.append(f"timed out after {status.get('timeout', '?')} s (rc {rc}): the count is incomplete")
        counted = None
    elif counted is None:
        notes.append("no ERROR SUMMARY / RACECHECK SUMMARY in the log: the run did not finish")
    if max(len(errors), len(races)) > 1:
        notes.append(f"{max(len(errors), len(races))} summaries (one per checked process), summed")
    result["errors"] = counted
    machine = _machine_lines(text, notes)
    kernels = machine.get("KERNELS")
    if kernels is None:
        arch = re.search(r"^device: .*? sm_(\d+)", text, re.M)
        seen = set()
        for kernel, guarded in CASE_LINE.findall(text):
            seen.add(kernel)
            if guarded:
                seen.add(f"{INDEX_CHECK}_sm{arch.group(1)}" if arch else INDEX_CHECK)
        kernels = sorted(seen)
        notes.append(f"no KERNELS line (the sweep did not finish): {len(kernels)} kernels from the cases it finished")
    result["kernels"], result["kernel_names"] = len(kernels), kernels
    sweep_counts = machine.get("SWEEP")
    if sweep_counts is not None:
        result["cases"] = sweep_counts
        if sweep_counts.get("failed"):
            notes.append(f"{sweep_counts['failed']} cases failed (an output not written, or an exception)")
    if not kernels and counted is not None:
        notes.append("no case ran: nothing was checked")
        counted = result["errors"] = None
    if rc is None:
        notes.append("no status file: exit status unknown")
    elif rc not in (0, 3, 124, 137):
        why = " (a case failed)" if rc == 1 else " (killed by a signal)" if rc > 128 else ""
        notes.append(f"exit status {rc}{why}")
    if result.get("warnings"):
        notes.append(f"{result['warnings']} racecheck warnings (hazards below the error level): see the log")
    for line in sorted({m.group(0).strip() for m in TROUBLE.finditer(text)}):
        notes.append(f"log says: {line[:160]}")
    result["notes"] = notes
    result["clean"] = (counted == 0 and rc == 0 and sweep_counts is not None and not sweep_counts.get("failed")
                       and sweep_counts.get("ran", 0) > 0)
    return result


def read_canary(log: Path, status: dict) -> dict:
    text = log.read_text(errors="replace")
    errors = [_number(n) for n in ERROR_SUMMARY.findall(text)]
    races = [_number(m[1]) for m in RACECHECK_SUMMARY.findall(text)]
    seen = max(sum(errors), sum(races)) if (errors or races) else None
    return {"log": log.name, "rc": status.get("rc"), "errors": seen, "detected": bool(seen),
            "launched": "CANARY" in text}


def _meta(folders: list[Path]) -> list[dict]:
    metas = []
    for folder in folders:
        path = folder / "sanitizer-meta.json"
        if path.exists():
            metas.append({"dir": str(folder), **json.loads(path.read_text())})
    return metas


def summarise(dirs: list[str], output: Optional[str], device: str = "", date: str = "", command: str = "",
              extra: Optional[dict] = None, judged=TOOLS) -> int:
    """The result JSON of sanitizers.sh's logs in `dirs` (the last folder that holds a tool's log wins);
    "passed" needs all four tools, the exit status only the `judged` ones."""
    folders = [Path(d) for d in dirs]
    metas = _meta(folders)
    first = metas[0] if metas else {}
    tools, names = {}, set()
    for tool in TOOLS:
        logs = [f / f"sanitizer-{tool}.log" for f in folders if (f / f"sanitizer-{tool}.log").exists()]
        if not logs:
            tools[tool] = {"kernels": None, "errors": None, "status": "fail", "notes": ["not run (no log)"]}
            continue
        log = logs[-1]
        entry = read_log(log, _status_file(log.with_suffix(".status")))
        if len(folders) > 1:
            entry["log"] = str(log)
        canary_log = log.with_name(f"sanitizer-{tool}-canary.log")
        if canary_log.exists():
            entry["canary"] = read_canary(canary_log, _status_file(canary_log.with_suffix(".status")))
        clean = entry.pop("clean")
        if not clean:
            entry["status"] = "fail"
        elif "canary" in entry and not entry["canary"]["detected"]:
            entry["status"] = "unverified"
            entry["notes"].append("the planted fault (--canary) was not reported: the filter or the tool may "
                                  "check nothing, so this zero proves nothing")
        else:
            entry["status"] = "pass"
            if "canary" not in entry:
                entry["notes"].append("no planted fault run (CANARY=0)")
        names.update(entry.pop("kernel_names") or [])
        tools[tool] = {"kernels": entry.pop("kernels"), "errors": entry.pop("errors"), **entry}
    warm = {}
    for folder in folders:
        path = folder / "sanitizer-warm.log"
        if path.exists():
            counts = _machine_lines(path.read_text(errors="replace"), []).get("SWEEP")
            warm = {"log": str(path) if len(folders) > 1 else path.name, "cases": counts}
    passed = all(t["status"] == "pass" for t in tools.values())
    result = {"device": device or first.get("device", "unknown"),
              "date": date or first.get("date") or time.strftime("%Y-%m-%d", time.gmtime()),
              "command": command or first.get("command", ""),
              "passed": passed, "tools": tools}
    for key in ("versions", "filter", "sanitizer"):
        if key in first:
            result[key] = first[key]
    if len({(m.get("device"), json.dumps(m.get("versions"), sort_keys=True)) for m in metas}) > 1:
        result["runs"] = metas                     # merged calls that differ: each one's meta
    if warm:
        result["warm"] = warm
    result.update(extra or {})
    result["kernel_names"] = sorted(names)
    text = json.dumps(result, indent=1) + "\n"
    if output:
        Path(output).write_text(text)
    for tool, entry in tools.items():
        notes = "; ".join(entry.get("notes") or [])
        print(f"{tool:<10} {entry['status']:<10} kernels={entry['kernels']} errors={entry['errors']}"
              f"{' | ' + notes if notes else ''}")
    print(f"{'passed' if passed else 'NOT passed'}" + (f": {output}" if output else ""))
    return 0 if all(tools[t]["status"] == "pass" for t in judged) else 1


# -- main -------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="list the cases and their kernels (no GPU needed)")
    mode.add_argument("--warm", action="store_true", help="compile every kernel, then (on a GPU) run without a sanitizer")
    mode.add_argument("--canary", metavar="TOOL", help="launch one kernel with a fault TOOL reports")
    mode.add_argument("--summarise", nargs="+", metavar="DIR", help="write the result JSON from sanitizers.sh's logs")
    parser.add_argument("-k", dest="pattern", help="run the cases whose names match this regular expression")
    parser.add_argument("--families", help=f"comma-separated: {', '.join(FAMILIES)}")
    parser.add_argument("--sm90a-rungs", default=os.environ.get("SANITIZER_SM90A_RUNGS", "default"),
                        help="comma-separated sm90a rungs, each sm90a case once per rung ('default': the planner's)")
    parser.add_argument("--arch", type=int, default=90, help="--list / --warm where no GPU is present: the arch described")
    parser.add_argument("--pool", action="store_true", help="keep CuPy's memory pool (default: one cudaMalloc per array)")
    parser.add_argument("--output", help="--summarise: where the JSON goes")
    parser.add_argument("--device", default="", help="--summarise: the device (default: sanitizer-meta.json's)")
    parser.add_argument("--date", default="", help="--summarise: the date (default: sanitizer-meta.json's, else today)")
    parser.add_argument("--command", default="", help="--summarise: the command (default: sanitizer-meta.json's)")
    parser.add_argument("--extra", default="{}", help="--summarise: a JSON object of fields to add (versions, ...)")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="--summarise: the tools whose results set the exit status (the JSON's 'passed' needs all)")
    args = parser.parse_args(argv)

    if args.summarise:
        judged = [t for t in re.split(r"[,\s]+", args.tools) if t]
        unknown = set(judged) - set(TOOLS)
        if unknown:
            raise SystemExit(f"--tools: unknown {sorted(unknown)} (the tools are {', '.join(TOOLS)})")
        return summarise(args.summarise, args.output, args.device, args.date, args.command, json.loads(args.extra),
                         judged)
    if args.canary:
        return canary(args.canary)
    cases = select(all_cases(parse_rungs(args.sm90a_rungs)), args.pattern, args.families)
    if args.list:
        return list_cases(cases, args.arch)
    if args.warm:
        compiled = compile_cases(cases, args.arch)
        if default_device().kind != "cuda":
            return compiled
        return sweep(cases, args.pool) or compiled
    return sweep(cases, args.pool)


if __name__ == "__main__":
    sys.exit(main())
