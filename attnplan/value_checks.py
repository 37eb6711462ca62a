"""Where `run` checks the values of the index arguments (cu_seqlens_q, cu_seqlens_kv, seqlens_kv,
block_table): the `check_values=` modes, and which plans check on the device.

- True (the default): on the device for a GPU plan that takes index arguments, where the check
  kernel can be built (backends/index_guard.py: no host copy, no synchronization; a broken argument is
  reported by a later `run` on the stream or by `plan.check()`), else on the host;
- "device": on the device, or InvalidArguments where that is not possible;
- "host": on the host, before the launch (one small copy per argument, on the current stream; raises
  at once);
- False: not at all (the caller vouches for the values; a bad one may be read out of bounds).
"""

from __future__ import annotations

import functools

import numpy as np

from .descriptor import AttentionDescriptor
from .device import Device
from .errors import InvalidArguments

def check_mode(value) -> str:
    """The mode `check_values=value` names ("auto", "device", "host" or "off"); InvalidArguments
    naming check_values otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return "auto" if value else "off"
    if isinstance(value, str) and value in ("device", "host"):
        return value
    raise InvalidArguments("check_values", f"is {value!r}; expected True (on the device for a GPU plan, else on "
                                           f"the host), 'device', 'host' or False")


@functools.lru_cache(maxsize=None)
def _device_reason(arch: int) -> str:
    from attnplan.backends import index_guard
    return index_guard.unavailable_reason(arch)


def device_check_reason(desc: AttentionDescriptor, device: Device) -> str:
    """Why `desc`'s index values cannot be checked on `device` ("" when they can)."""
    from attnplan.backends import index_guard
    if not index_guard.guarded_arguments(desc):
        return "the descriptor takes no index arguments"
    if device.kind != "cuda" or device.arch is None:
        return f"the plan is for {device}, not a GPU"
    return _device_reason(device.arch)


__all__ = ["check_mode", "device_check_reason"]
