"""What a cubin holds, per kernel: registers, shared memory, stack, spills and its SASS opcodes.

Read with `cuobjdump` (and the `nvdisasm` it runs to print SASS), the executables of the pip wheels
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (the `nvrtc` extra), else from PATH.  No GPU needed:
`attnplan kernel inspect` and the SASS fingerprints of bench/sass_fingerprint.py read it.
"""

from __future__ import annotations

import collections
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs

from .errors import AttnPlanError

# Tool -> the wheels that ship it (CUDA 13 names, then the CUDA 12 ones).
TOOL_WHEELS = {"cuobjdump": ("nvidia-cuda-cuobjdump", "nvidia-cuda-cuobjdump-cu12"),
               "nvdisasm": ("nvidia-cuda-nvdisasm", "nvidia-cuda-nvdisasm-cu12")}

# Bytes one local-memory access moves, by width modifier (no modifier: 32 bits).
_LOCAL_ACCESS_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}
_LOCAL_ACCESS = ("LDL", "STL")

_FUNCTION_USAGE = re.compile(r"^\s*Function\s+(\S+?):\s*$")
_USAGE_FIELD = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")
_SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
# `/*0060*/   @!P0 HMMA.16816.F32.BF16 R4, R8, R12, R4 ;   /* 0x... */`: offset, instruction, encoding.
_SASS_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-fA-F]+\*/\s*([^;]*);")


class InspectToolMissing(AttnPlanError, RuntimeError):
    """cuobjdump or nvdisasm is not installed; the message names the pip package."""

    def __init__(self, tool: str):
        self.tool = tool
        super().__init__(f"{tool} not found: pip install {TOOL_WHEELS[tool][0]} (or, from the attnplan checkout, pip install -e '.[nvrtc]'), "
                         f"or put a CUDA toolkit's {tool} on PATH")


class InspectFailed(AttnPlanError, RuntimeError):
    """cuobjdump could not read the cubin; carries its output."""


@attrs.frozen
class KernelInfo:
    """One function of a cubin.  shared_bytes: static shared memory as cuobjdump reports it (on sm_90
    that includes the 1 KiB the hardware reserves per CTA once a kernel uses shared memory; dynamic
    shared memory is sized at launch and not in it).  spill_bytes: bytes moved by the local-memory
    loads and stores (LDL/STL) in the code, which is how ptxas counts spill stores + loads.
    opcodes: SASS opcode with its modifiers -> count, most frequent first."""

    name: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_bytes: int
    opcodes: dict

    def fingerprint(self) -> dict:
        """Everything but the name: what a code change shows up in."""
        return {"registers": self.registers, "shared_bytes": self.shared_bytes, "stack_bytes": self.stack_bytes,
                "spill_bytes": self.spill_bytes, "opcodes": dict(self.opcodes)}

    def as_dict(self) -> dict:
        return {"name": self.name, **self.fingerprint()}


# -- finding the tools -----------------------------------------------------------------------------

def _wheel_executable(tool: str) -> str | None:
    for wheel in TOOL_WHEELS[tool]:
        try:
            files = importlib.metadata.distribution(wheel).files or ()
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in files:
            if file.name == tool and file.parent.name == "bin":
                path = Path(file.locate())
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    return None


@functools.lru_cache(maxsize=None)
def tool_path(tool: str) -> str:
    """The `tool` executable: from its pip wheel, else from PATH; InspectToolMissing if neither."""
    found = _wheel_executable(tool) or shutil.which(tool)
    if found is None:
        raise InspectToolMissing(tool)
    return found


def _cuobjdump(option: str, path: str) -> str:
    # cuobjdump prints SASS through nvdisasm, found on PATH or in NVDISASM_PATH (a folder); the two
    # wheels may install to different folders.
    command = [tool_path("cuobjdump"), option, path]
    env = {**os.environ, "NVDISASM_PATH": str(Path(tool_path("nvdisasm")).parent)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise InspectFailed(f"cuobjdump {option} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def tool_versions() -> dict:
    """{"cuobjdump": "13.5.37", "nvdisasm": ...}: the release each tool reports (SASS spelling may
    change between releases)."""
    versions = {}
    for tool in TOOL_WHEELS:
        text = subprocess.run([tool_path(tool), "--version"], capture_output=True, text=True).stdout
        match = re.search(r"\bV(\d+(?:\.\d+)*)", text)
        versions[tool] = match.group(1) if match else text.strip()
    return versions


# -- parsing what cuobjdump prints -----------------------------------------------------------------

def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """`cuobjdump --dump-resource-usage` -> {function: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}}."""
    usage, function = {}, None
    for line in text.splitlines():
        header = _FUNCTION_USAGE.match(line)
        if header:
            function = header.group(1)
        elif function is not None and "REG:" in line:
            usage[function] = {field: int(value) for field, value in _USAGE_FIELD.findall(line)}
            function = None
    return usage


def opcode_of(instruction: str) -> str | None:
    """`@!P0 LDSM.16.M88.4 R4, [R2] ` -> `LDSM.16.M88.4`: the predicate and the operands dropped."""
    words = instruction.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0] if words and words[0][:1].isalpha() else None


def parse_sass(text: str) -> dict[str, collections.Counter]:
    """`cuobjdump --dump-sass` -> {function: Counter(opcode -> count)}."""
    histograms, current = {}, None
    for line in text.splitlines():
        header = _SASS_FUNCTION.match(line)
        if header:
            current = histograms.setdefault(header.group(1), collections.Counter())
            continue
        instruction = _SASS_INSTRUCTION.match(line)
        if instruction and current is not None:
            opcode = opcode_of(instruction.group(1))
            if opcode:
                current[opcode] += 1
    return histograms


def local_access_bytes(opcode: str) -> int:
    """Bytes one execution of `opcode` moves to or from local memory (0 unless LDL/STL)."""
    base, *modifiers = opcode.split(".")
    if base not in _LOCAL_ACCESS:
        return 0
    return next((_LOCAL_ACCESS_BYTES[m] for m in modifiers if m in _LOCAL_ACCESS_BYTES), 4)


def kernels_from(resource_usage: str, sass: str) -> list[KernelInfo]:
    """KernelInfo of every function in the two dumps, in the resource dump's order."""
    usage, histograms = parse_resource_usage(resource_usage), parse_sass(sass)
    kernels = []
    for name, fields in usage.items():
        counts = histograms.get(name, collections.Counter())
        kernels.append(KernelInfo(
            name=name, registers=fields.get("REG", 0), shared_bytes=fields.get("SHARED", 0),
            stack_bytes=fields.get("STACK", 0),
            spill_bytes=sum(local_access_bytes(op) * n for op, n in counts.items()),
            opcodes=dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))))
    return kernels


def inspect_cubin(cubin: bytes) -> list[KernelInfo]:
    """Every function of `cubin` (one arch's ELF, as NVRTC makes it)."""
    with tempfile.TemporaryDirectory(prefix="attnplan-inspect-") as folder:
        path = os.path.join(folder, "module.cubin")
        with open(path, "wb") as file:
            file.write(cubin)
        return kernels_from(_cuobjdump("--dump-resource-usage", path), _cuobjdump("--dump-sass", path))
