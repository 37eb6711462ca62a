"""kernels/sm90a/ptx.cuh, compiled by NVRTC for sm_90a with no GPU: the probe kernel of
tests/sm90a_host/ptx_probe.cu (one warp-specialized 64-row tile, O = (scale Q K^T) V) in four
instantiations (bf16 and f16; S widths 64 and 128; head dims 64, 96, 192, 256) must become the SASS
its wrappers promise: HGMMA of the right shapes, SS (descriptors) for Q K^T and RS (registers) with
a transposed B for P V, TMA loads of rank 2, 3 and 4 and a TMA store, mbarrier (SYNCS) operations,
register reallocation, named barriers and stmatrix; without ptxas warnings (wgmma serialization) or
local memory.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from attnplan.kernel_inspect import inspect_cubin
from sm90a_host.nvrtc_sm90a import compile_sm90a, sass_by_function

PROBE_SOURCE = Path(__file__).parent / "sm90a_host" / "ptx_probe.cu"
# kernel -> (element type, S width = N of Q K^T, head dim = N of P V)
PROBES = {"probe_bf16_n64_d192": ("bf16", 64, 192), "probe_f16_n128_d96": ("f16", 128, 96),
          "probe_bf16_n64_d256": ("bf16", 64, 256), "probe_f16_n64_d64": ("f16", 64, 64)}
PRODUCER_REGISTERS, CONSUMER_REGISTERS = 40, 232        # the probe's setmaxnreg counts
# HGMMA.<shape>.F32[.BF16] D, [A register,] gdesc[..][.tnspA][.tnspB], C (RZ, !UPT: scale-d = 0)
_HGMMA = re.compile(r"HGMMA\.(64x\d+x16)\.F32(\.BF16)? (R\d+), (?:(R\d+), )?gdesc\[UR\d+\]([.\w]*), (RZ, !UPT|R\d+)")


@pytest.fixture(scope="module")
def probe():
    started = time.perf_counter()
    cubin, log = compile_sm90a(PROBE_SOURCE.read_text(), "ptx_probe")
    seconds = time.perf_counter() - started
    sass = sass_by_function(cubin)          # skips first where cuobjdump is missing
    return {"log": log, "kernels": {k.name: k for k in inspect_cubin(cubin)}, "sass": sass, "seconds": seconds}


def test_probe_compiles_cleanly(probe, record_property):
    record_property("sm90a_probe_compile_seconds", round(probe["seconds"], 3))    # in --junitxml reports
    print(f"\nNVRTC compiled {len(PROBES)} sm90a probe kernels in {probe['seconds']:.2f} s")
    assert set(probe["kernels"]) == set(PROBES)
    assert probe["log"] == ""                   # no ptxas remark: no serialized or fenced-in wgmma
    assert probe["seconds"] < 60


@pytest.mark.parametrize("name", PROBES)
def test_wgmma_shapes_and_operand_forms(probe, name):
    dtype, block_n, head_dim = PROBES[name]
    suffix = ".BF16" if dtype == "bf16" else ""
    instructions = [_HGMMA.search(line) for line in probe["sass"][name] if line.startswith("HGMMA")]
    assert all(instructions)
    ss = [m for m in instructions if m.group(4) is None]               # A and B from descriptors
    rs = [m for m in instructions if m.group(4) is not None]           # A from registers
    assert [m.group(1) for m in ss] == [f"64x{block_n}x16"] * (head_dim // 16)
    assert [m.group(1) for m in rs] == [f"64x{head_dim}x16"] * (block_n // 16)
    assert {m.group(2) or "" for m in instructions} == {suffix}
    assert {m.group(5) for m in ss} == {""}                            # Q and K: K-major, no transpose
    assert {m.group(5) for m in rs} == {".tnspB"}                      # V: N-major
    for chain in (ss, rs):                 # scale-d: the first k-step overwrites, the rest accumulate
        assert [m.group(6) for m in chain] == ["RZ, !UPT"] + [m.group(3) for m in chain[1:]]
    opcodes = probe["kernels"][name].opcodes
    assert sum(n for op, n in opcodes.items() if op.startswith("HGMMA")) == len(ss) + len(rs)


@pytest.mark.parametrize("name", PROBES)
def test_tma_mbarrier_and_synchronisation(probe, name):
    _, block_n, head_dim = PROBES[name]
    panels = -(-head_dim // 64)
    opcodes = probe["kernels"][name].opcodes
    expected = {"UTMALDG.2D": panels, "UTMALDG.3D": panels, "UTMALDG.4D": panels, "UTMASTG.2D": 1,
                "UTMACCTL.PF": 3,                               # prefetch.tensormap, one per loaded map
                "SYNCS.EXCH.64": 2, "SYNCS.CCTL.IV": 2,         # mbarrier.init, mbarrier.inval
                "SYNCS.ARRIVE.TRANS64": 1,                      # arrive.expect_tx
                "SYNCS.ARRIVE.TRANS64.A1T0": 1,                 # a plain arrive
                "USETMAXREG.DEALLOC.CTAPOOL": 1, "USETMAXREG.TRY_ALLOC.CTAPOOL": 1,
                "BAR.ARV": 1, "STSM.16.M88.4": head_dim // 16}
    assert {op: opcodes.get(op, 0) for op in expected} == expected
    assert opcodes.get("SYNCS.PHASECHK.TRANS64.TRYWAIT", 0) >= 2     # try_wait.parity on both barriers
    assert opcodes.get("FENCE.VIEW.ASYNC.S", 0) >= 1                 # fence.proxy.async.shared::cta
    assert opcodes.get("WARPGROUP.ARRIVE", 0) == 2                   # one wgmma.fence per GEMM
    assert opcodes.get("WARPGROUP.DEPBAR.LE", 0) == 3                # wait_group 1, 0 (S) and 0 (O)
    sass = probe["sass"][name]
    assert f"USETMAXREG.DEALLOC.CTAPOOL {PRODUCER_REGISTERS:#x}" in sass
    assert f"USETMAXREG.TRY_ALLOC.CTAPOOL UP0, {CONSUMER_REGISTERS:#x}" in sass
    assert "BAR.SYNC.DEFER_BLOCKING 0x1, 0x80" in sass                # bar.sync 1, 128: the consumers
    assert "BAR.SYNC.DEFER_BLOCKING 0x2, 0x100" in sass               # bar.sync 2, 256 (bar.arrive's pair)
    assert "BAR.ARV 0x2, 0x100" in sass


@pytest.mark.parametrize("name", PROBES)
def test_no_local_memory(probe, name):
    kernel = probe["kernels"][name]
    assert kernel.spill_bytes == 0 and kernel.stack_bytes == 0
    assert not [op for op in kernel.opcodes if op.split(".")[0] in ("LDL", "STL")]


def test_every_wgmma_shape_type_and_form():
    """Each of the 20 generated wrappers (N in 64..256, f16/bf16, SS/RS) compiles to its HGMMA, with
    the transpose flags it was given: SS with both transposed, RS with B K-major."""
    widths, types = (64, 96, 128, 192, 256), {"f16": "half_t", "bf16": "bfloat16_t"}
    kernels = "\n".join(f'''
extern "C" __global__ void every_{dtype}_{n}(float* out, unsigned long long da, unsigned long long db, int acc) {{
  float d[{n // 2}];
  for (int i = 0; i < {n // 2}; ++i) d[i] = out[i];
  unsigned a[4] = {{threadIdx.x, threadIdx.x + 1, threadIdx.x + 2, threadIdx.x + 3}};
  wgmma_fence();
  wgmma_ss<{n}, {cxx}, 1, 1>(d, da, db, acc);
  wgmma_rs<{n}, {cxx}>(d, a, db, 1);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  fence_accumulator(d);
  for (int i = 0; i < {n // 2}; ++i) out[threadIdx.x * {n // 2} + i] = d[i];
}}''' for dtype, cxx in types.items() for n in widths)
    source = '#include "sm90a/ptx.cuh"\nusing namespace attn;\nusing namespace attn::sm90a;\n' + kernels
    cubin, log = compile_sm90a(source, "every_wgmma")
    assert log == ""
    sass = sass_by_function(cubin)
    for dtype in types:
        for n in widths:
            found = [_HGMMA.search(line) for line in sass[f"every_{dtype}_{n}"] if line.startswith("HGMMA")]
            suffix = ".BF16" if dtype == "bf16" else None
            assert [(m.group(1), m.group(2), m.group(4) is not None, m.group(5)) for m in found] == [
                (f"64x{n}x16", suffix, False, ".tnspA.tnspB"), (f"64x{n}x16", suffix, True, "")]
