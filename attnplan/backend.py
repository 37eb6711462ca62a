"""What a backend is: declared capabilities, its own reasons, and a builder of executables."""

from __future__ import annotations

from typing import Callable, Optional

import attrs

from .capabilities import Capabilities
from .descriptor import AttentionDescriptor
from .device import Device
from .sku import KernelSku, PrecisionGuarantee


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
    """Subclasses set `name` and `capabilities` and implement `kernel_name`, `precision` and `build`.

    Two kinds of reasons: `reasons` says what the backend cannot do for this problem on this kind of
    device (tile limits, semantics it cannot express); `availability` says what this machine lacks
    (a library, a present GPU).  The planner ranks every backend without the first kind, so that a
    described device shows what a real one would run; only one without either kind is chosen.
    """

    name: str = ""
    capabilities: Capabilities = Capabilities()
    # Ranked after every other candidate by every policy (the reference: correct, never fast).
    last_resort: bool = False

    def reasons(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        """What this backend cannot do for `desc` on `device`, beyond the declared capabilities."""
        return []

    def availability(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        """What this machine lacks for this backend to run (libraries, a present device)."""
        return []

    def gate(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        """Why the planner must not choose this backend on its own (code not yet verified on a GPU):
        empty when verified.  An explicit opt-in lifts the gate: `prefer=` naming this backend
        exactly, or $ATTNPLAN_UNVERIFIED naming it (or "all")."""
        return []

    def precision(self, desc: AttentionDescriptor, device: Device) -> PrecisionGuarantee:
        """The guarantee a plan for `desc` will carry (known before building: the planner's tie rule)."""
        raise NotImplementedError

    def kernel_name(self, desc: AttentionDescriptor, device: Device) -> str:
        raise NotImplementedError

    def build(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> Executable:
        """Build (compile, plan) for `desc`; `config` pins a tile/config from a SKU."""
        raise NotImplementedError

    def library_versions(self) -> dict:
        return {}
