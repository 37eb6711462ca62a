"""Compiling CUDA C++ for sm_90a with NVRTC in the tests (skipping where NVRTC is missing), and the
SASS of a cubin per function with its operands (kernel_inspect keeps only the opcodes)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from attnplan.kernels import SOURCE_DIR

SM90A_OPTIONS = ["-std=c++17", "--gpu-architecture=sm_90a", f"-I{SOURCE_DIR}"]


def host_dump(program: str, workdir: Path) -> dict:
    """Build tests/sm90a_host/<program>.cpp with g++ (against the kernel headers) in `workdir`, run it,
    and return the JSON it prints; skips when g++ is missing."""
    import json
    import shutil
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found")
    binary = Path(workdir) / program
    subprocess.run([gxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{SOURCE_DIR}",
                    str(Path(__file__).parent / f"{program}.cpp"), "-o", str(binary)], check=True)
    return json.loads(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout)


def compile_sm90a(source: str, name: str) -> tuple[bytes, str]:
    """(cubin, NVRTC log) of `source` for sm_90a with kernels/ on the include path."""
    compiler = pytest.importorskip("attnplan.backends.nvrtc.compiler")
    try:
        compiler.nvrtc_version()
    except compiler.NvrtcUnavailable as exc:  # pragma: no cover - the nvrtc extra installs it
        pytest.skip(f"NVRTC unavailable: {exc}")
    return compiler.compile_source(source, name, SM90A_OPTIONS)


def sass_by_function(cubin: bytes) -> dict[str, list[str]]:
    """Function name -> its SASS instructions with operands, from cuobjdump --dump-sass."""
    from attnplan.kernel_inspect import InspectToolMissing, tool_path
    try:
        cuobjdump, nvdisasm = tool_path("cuobjdump"), tool_path("nvdisasm")
    except InspectToolMissing as exc:  # pragma: no cover - the nvrtc extra installs the tools
        pytest.skip(str(exc))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "module.cubin"
        path.write_bytes(cubin)
        env = {**os.environ, "NVDISASM_PATH": str(Path(nvdisasm).parent)}
        text = subprocess.run([cuobjdump, "--dump-sass", str(path)], check=True, capture_output=True, text=True,
                              env=env).stdout
    functions, current = {}, None
    for line in text.splitlines():
        header = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if header:
            current = functions.setdefault(header.group(1), [])
        elif current is not None and re.match(r"\s*/\*[0-9a-f]+\*/", line):
            current.append(line.split("*/", 1)[1].split(";")[0].strip())
    return functions


def compile_and_read(source: str, name: str, options: list) -> dict:
    """Compile one kernel and read what the SASS tests check (a picklable function for a pool of spawned
    processes): NVRTC's log, the compile seconds, `attnplan kernel inspect`'s info, the entry's SASS."""
    from attnplan.backends.nvrtc import compiler
    from attnplan.kernel_inspect import inspect_cubin

    cubin, log, seconds = compiler.timed_compile_source(source, name, options)
    (info,) = inspect_cubin(cubin)
    return {"log": log, "seconds": seconds, "info": info, "sass": sass_by_function(cubin)["attn_fwd_kernel"]}
