"""`attnplan.kernel_inspect` (cuobjdump's dumps -> per-kernel registers, shared memory, stack, spills
and SASS opcodes) on fixed dump samples, and `attnplan kernel inspect` on real compiles, checked
against what ptxas itself reports (`--ptxas-options=-v`).  No GPU needed."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from attnplan import cli, kernel_inspect
from attnplan.device import as_device
from attnplan.kernel_inspect import InspectToolMissing, KernelInfo, kernels_from, local_access_bytes, opcode_of

# -- the parser, on samples of what cuobjdump 13 prints -------------------------------------------

RESOURCE_USAGE = """
Resource usage:
 Common:
  GLOBAL:234 CONSTANT[4]:480
 Function attn_bwd_dq_kernel:
  REG:162 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:1064 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function spilly:
  REG:32 STACK:1008 SHARED:0 LOCAL:0 CONSTANT[2]:8 CONSTANT[0]:548 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

SASS = """
\tcode for sm_90
\t.target\tsm_90

\t\tFunction : attn_bwd_dq_kernel
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                          /* 0x00000a00ff017b82 */
                                                                                   /* 0x000ff00000000800 */
        /*0040*/                   UISETP.GE.AND UP0, UPT, UR6, UR4, UPT ;         /* 0x000000040600728c */
        /*0060*/               @P0 EXIT ;                                          /* 0x000000000000094d */
        /*08c0*/              @!P6 LDGSTS.E.BYPASS.128 [R3], desc[UR22][R4.64], !P0 ;  /* 0x000000000403efae */
        /*0900*/              @!PT LDS RZ, [RZ] ;                                  /* 0x00000000fffff984 */
        /*0910*/             @!UP1 UTMALDG.2D [UR8], [UR4] ;                       /* 0x0000000804007fb4 */
        /*0a00*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;           /* 0x0000000c0804723c */
        /*0a10*/                   HMMA.16816.F32.BF16 R16, R8, R14, R16 ;         /* 0x0000000e0810723c */
        /*0a20*/               @P1 LDSM.16.M88.4 R8, [R2+0x400] ;                  /* 0x000400000208183b */
        /*0a30*/                   BRA 0xa30;                                      /* 0xfffffffc00fc7947 */
        /*0a40*/                   NOP;                                            /* 0x0000000000007918 */

\t\tFunction : spilly
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0220*/                   STL [R1+0x3e8], R22 ;                           /* 0x0003e81601007387 */
        /*0230*/                   STL.64 [R1+0x8], R22 ;                          /* 0x0000081601007387 */
        /*0240*/                   LDL.LU R4, [R1+0x10] ;                          /* 0x0000100001047983 */
        /*0250*/               @P2 LDL.LU.128 R8, [R1+0x20] ;                      /* 0x0000200001082983 */
        /*0260*/                   STL.U8 [R1+0x30], R2 ;                          /* 0x0000301601007387 */
        /*0270*/                   EXIT ;                                          /* 0x000000000000794d */
"""


def test_every_function_of_a_multi_kernel_dump():
    dq, spilly = kernels_from(RESOURCE_USAGE, SASS)
    assert dq == KernelInfo(name="attn_bwd_dq_kernel", registers=162, shared_bytes=1024, stack_bytes=0, spill_bytes=0,
                            opcodes={"HMMA.16816.F32.BF16": 2, "BRA": 1, "EXIT": 1, "LDC": 1,
                                     "LDGSTS.E.BYPASS.128": 1, "LDS": 1, "LDSM.16.M88.4": 1, "NOP": 1,
                                     "UISETP.GE.AND": 1, "UTMALDG.2D": 1})
    assert list(dq.opcodes)[0] == "HMMA.16816.F32.BF16"          # most frequent first, then by name
    assert (spilly.name, spilly.registers, spilly.stack_bytes, spilly.shared_bytes) == ("spilly", 32, 1008, 0)
    assert spilly.spill_bytes == 4 + 8 + 4 + 16 + 1
    assert spilly.opcodes == {"STL": 1, "STL.64": 1, "LDL.LU": 1, "LDL.LU.128": 1, "STL.U8": 1, "EXIT": 1}


def test_fingerprint_and_json_shape():
    (dq, _) = kernels_from(RESOURCE_USAGE, SASS)
    assert list(dq.as_dict()) == ["name", "registers", "shared_bytes", "stack_bytes", "spill_bytes", "opcodes"]
    assert dq.as_dict() == {"name": dq.name, **dq.fingerprint()}
    assert json.loads(json.dumps(dq.as_dict()))["opcodes"]["UTMALDG.2D"] == 1


@pytest.mark.parametrize("instruction, opcode", [
    ("@P0 EXIT ", "EXIT"), ("@!PT LDS RZ, [RZ] ", "LDS"), ("@!UP1 UTMALDG.2D [UR8], [UR4] ", "UTMALDG.2D"),
    ("HMMA.16816.F32.BF16 R4, R8, R12, R4 ", "HMMA.16816.F32.BF16"), ("NOP", "NOP"), ("", None), ("@P0 ", None)])
def test_opcode_drops_predicate_and_operands(instruction, opcode):
    assert opcode_of(instruction) == opcode


@pytest.mark.parametrize("opcode, size", [("LDL", 4), ("LDL.LU", 4), ("STL.64", 8), ("LDL.LU.128", 16),
                                          ("STL.U8", 1), ("LDL.S16", 2), ("LDS.128", 0), ("STG.E.64", 0)])
def test_local_access_bytes(opcode, size):
    assert local_access_bytes(opcode) == size


def test_a_function_without_sass_has_an_empty_histogram():
    (only,) = kernels_from(" Function k:\n  REG:8 STACK:0 SHARED:0 LOCAL:0\n", "")
    assert only.opcodes == {} and only.spill_bytes == 0 and only.registers == 8


def test_missing_tools_name_the_pip_package(monkeypatch):
    monkeypatch.setattr(kernel_inspect, "_wheel_executable", lambda tool: None)
    monkeypatch.setattr(kernel_inspect.shutil, "which", lambda tool: None)
    kernel_inspect.tool_path.cache_clear()
    try:
        with pytest.raises(InspectToolMissing, match="pip install nvidia-cuda-cuobjdump"):
            kernel_inspect.inspect_cubin(b"\x7fELF")
        with pytest.raises(InspectToolMissing, match="pip install nvidia-cuda-nvdisasm"):
            kernel_inspect.tool_path("nvdisasm")
    finally:
        kernel_inspect.tool_path.cache_clear()


# -- the command -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=2000, color_system=None, soft_wrap=True))


@pytest.mark.parametrize("flags, message", [
    (["--backend", "reference"], "not a backend that compiles kernels"),
    (["--device", "cpu"], "needs a CUDA arch"),
    (["--dtype", "f32"], "dtype 'f32' not supported")])
def test_kernel_inspect_refuses_with_a_reason(capsys, flags, message):
    assert cli.main(["kernel", "inspect", *flags]) == 2
    assert message in capsys.readouterr().out


def _needs_compiler_and_tools():
    compiler = pytest.importorskip("attnplan.backends.nvrtc.compiler")
    try:
        compiler.nvrtc_version()
        for tool in ("cuobjdump", "nvdisasm"):
            kernel_inspect.tool_path(tool)
    except (compiler.NvrtcUnavailable, InspectToolMissing) as exc:
        pytest.skip(str(exc))
    return compiler


def ptxas_report(log: str) -> dict:
    """ptxas -v's log -> {function: {registers, stack_bytes, spill_bytes, static_shared_bytes}}."""
    report, function = {}, None
    for line in log.splitlines():
        if match := re.search(r"Function properties for (\S+)", line):
            function = report.setdefault(match.group(1), {})
        elif match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            function.update(stack_bytes=int(match[1]), spill_bytes=int(match[2]) + int(match[3]))
        elif match := re.search(r"Used (\d+) registers", line):
            shared = re.search(r"(\d+) bytes smem", line)
            function.update(registers=int(match[1]), static_shared_bytes=int(shared[1]) if shared else 0)
    return report


# sm_90 reserves 1 KiB of shared memory per CTA for the system; cuobjdump counts it, ptxas does not.
SM90_RESERVED_SHARED_BYTES = 1024
MAIN_KERNELS = ("attn_fwd_kernel", "attn_bwd_kernel")     # they use shared memory for sure


@pytest.mark.parametrize("flags", [[], ["--backward"], ["--backward", "--deterministic", "--causal"]],
                         ids=["forward", "backward", "backward_deterministic"])
def test_kernel_inspect_json_on_a_real_compile(capsys, flags):
    compiler = _needs_compiler_and_tools()
    from attnplan.backends.nvrtc.backend import NvrtcBackend

    argv = ["kernel", "inspect", "--device", "sm_90", "--head-dim", "64", *flags, "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["kernels"]
    kernels = {k["name"]: k for k in out["kernels"]}
    device = as_device("sm_90")
    key = NvrtcBackend().dispatch_key(cli.descriptor_from(cli.build_parser().parse_args(argv), device), device)
    assert [k["name"] for k in out["kernels"]] == list(compiler.entry_points(key))      # in launch order
    if not flags:
        assert list(kernels) == ["attn_fwd_kernel"]
    _, log = compiler.compile_source(compiler.source_for(key), key.name,
                                     compiler.options_for(key) + ["--ptxas-options=-v"])
    ptxas = ptxas_report(log)
    assert set(ptxas) == set(kernels)
    for name, kernel in kernels.items():
        assert kernel["registers"] == ptxas[name]["registers"] > 0
        assert kernel["stack_bytes"] == ptxas[name]["stack_bytes"]
        assert kernel["spill_bytes"] == ptxas[name]["spill_bytes"]
        if name in MAIN_KERNELS:
            assert kernel["opcodes"]["HMMA.16816.F32.BF16"] > 0
            assert kernel["shared_bytes"] == ptxas[name]["static_shared_bytes"] + SM90_RESERVED_SHARED_BYTES


def test_kernel_inspect_table(capsys):
    _needs_compiler_and_tools()
    assert cli.main(["kernel", "inspect", "--head-dim", "64"]) == 0        # the default device: sm_90
    text = capsys.readouterr().out
    assert "backend: nvrtc.sm80" in text and "sm_90" in text
    assert "attn_fwd_kernel" in text and "HMMA.16816.F32.BF16" in text and "_sm90" in text
