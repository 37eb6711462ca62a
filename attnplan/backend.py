"""What a backend is: declared capabilities, its own reasons, and a builder of executables."""

from __future__ import annotations

from typing import Callable, Optional

import attrs

from .capabilities import Capabilities
from .descriptor import AttentionDescriptor
from .device import Device
from .sku import KernelSku


@attrs.frozen(eq=False)
class Executable:
    """A built kernel: its SKU and workspace, and the functions that launch it.

    forward(bound, out, lse) writes `out` and (if not None) `lse`;
    backward(bound, dq, dk, dv, dsink) writes the gradients.  Both take storage Tensors.
    """

    sku: KernelSku
    workspace_size: int
    forward: Optional[Callable] = None
    backward: Optional[Callable] = None
    check_arguments: Optional[Callable] = None   # backend-specific argument rules (alignment...)


class Backend:
    """Subclasses set `name` and `capabilities` and implement `kernel_name` and `build`."""

    name: str = ""
    capabilities: Capabilities = Capabilities()

    def reasons(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        """Reasons of this backend's own (missing libraries, tile limits); empty: none."""
        return []

    def kernel_name(self, desc: AttentionDescriptor, device: Device) -> str:
        raise NotImplementedError

    def build(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> Executable:
        """Build (compile, plan) for `desc`; `config` pins a tile/config from a SKU."""
        raise NotImplementedError

    def library_versions(self) -> dict:
        return {}
