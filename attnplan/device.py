"""Which device a plan is for: the CPU, or a CUDA GPU of a given compute capability."""

from __future__ import annotations

import functools
import re
from typing import Optional

import attrs


@attrs.frozen
class Device:
    """kind: "cpu" or "cuda".  arch: compute capability as an integer (90 for sm_90).
    A CUDA device need not be present: `Device.cuda(arch=90)` describes one, which is how
    `explain` and the compile checks reason about GPUs from a CPU-only machine."""

    kind: str = attrs.field(validator=attrs.validators.in_(("cpu", "cuda")))
    index: int = 0
    arch: Optional[int] = None
    name: str = ""
    present: bool = False

    @classmethod
    def cpu(cls) -> "Device":
        return cls("cpu", 0, None, "cpu", True)

    @classmethod
    def cuda(cls, index: int = 0, arch: Optional[int] = None) -> "Device":
        """The CUDA device `index`; described only (not present) when `arch` is given."""
        if arch is not None:
            return cls("cuda", index, int(arch), f"sm_{arch}", False)
        found = _probe_cuda(index)
        if found is None:
            return cls("cuda", index, None, "no CUDA device", False)
        return found

    @property
    def arch_name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"sm_{self.arch}"

    def __str__(self) -> str:
        if self.kind == "cpu":
            return "cpu"
        state = "" if self.present else " (described, not present)"
        name = "" if self.name == self.arch_name else f" {self.name}"
        return f"cuda:{self.index}{name} sm_{self.arch}{state}"


@functools.lru_cache(maxsize=None)
def _probe_cuda(index: int) -> Optional[Device]:
    try:
        import cupy
        if index >= cupy.cuda.runtime.getDeviceCount():
            return None
        props = cupy.cuda.runtime.getDeviceProperties(index)
    except Exception:  # no CuPy, no driver, or no GPU: all mean "no CUDA device here"
        return None
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return Device("cuda", index, props["major"] * 10 + props["minor"], name, True)


def default_device() -> Device:
    """The current CUDA device when one is present, else the CPU."""
    index = 0
    try:
        import cupy
        index = cupy.cuda.runtime.getDevice()
    except Exception:
        pass
    found = _probe_cuda(index)
    return found if found is not None else Device.cpu()


_DEVICE_TEXT = re.compile(r"^(cpu|cuda(?::(\d+))?|sm_?(\d+)a?)$")


def as_device(device) -> Device:
    """Accept a Device, None (the default device), "cpu", "cuda", "cuda:N" or "sm_90"."""
    if device is None:
        return default_device()
    if isinstance(device, Device):
        return device
    match = _DEVICE_TEXT.match(str(device).strip().lower())
    if not match:
        raise ValueError(f"device={device!r} is invalid: use None, 'cpu', 'cuda', 'cuda:N' or 'sm_NN'")
    if match.group(1) == "cpu":
        return Device.cpu()
    if match.group(3):
        return Device.cuda(arch=int(match.group(3)))
    return Device.cuda(int(match.group(2) or 0))
