"""`Plan`: a descriptor bound to one backend's built kernel.  `select` and `explain` share
one loop over the registry; every rejected backend says why."""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs

from . import registry
from .arguments import BoundArguments, bind_arguments, lse_shape
from .backend import Backend, Executable
from .capabilities import capability_reasons
from .descriptor import AttentionDescriptor
from .device import Device, as_device
from .dtypes import lse_dtype
from .errors import InvalidArguments, NoPlanError, SkuMismatch
from .interop import empty, to_caller, wrap_storage
from .sku import KernelSku


@attrs.frozen
class Verdict:
    backend: str
    kernel: str
    accepted: bool
    reasons: tuple = ()


class Verdicts(list):
    """The verdict of every backend, printable as a table."""

    def __str__(self) -> str:
        rows = [("backend", "kernel", "verdict")]
        for v in self:
            rows.append((v.backend, v.kernel, "accepted" if v.accepted else "; ".join(v.reasons)))
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows)


def _verdict(backend: Backend, desc: AttentionDescriptor, device: Device) -> Verdict:
    reasons = capability_reasons(backend.capabilities, desc, device)
    if not reasons:
        reasons = backend.reasons(desc, device)
    kernel = backend.kernel_name(desc, device) if not reasons else "-"
    return Verdict(backend.name, kernel, not reasons, tuple(reasons))


def explain(desc: AttentionDescriptor, device=None, prefer=None) -> Verdicts:
    """Why each registered backend accepts or rejects `desc` on `device`."""
    device = as_device(device)
    return Verdicts(_verdict(b, desc, device) for b in registry.ordered(prefer))


class AttentionResult(NamedTuple):
    out: Any
    lse: Any


class Plan:
    """An executable plan.  Build with `Plan.select` or `Plan.from_sku`."""

    def __init__(self, desc: AttentionDescriptor, device: Device, backend: Backend, executable: Executable):
        self.desc, self.device, self.backend, self._executable = desc, device, backend, executable

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def select(cls, desc: AttentionDescriptor, device=None, prefer=None, restrict: bool = False) -> "Plan":
        """The first backend (in preference order) that accepts `desc`; `prefer` names backends
        to try first (or only, with `restrict=True`)."""
        device = as_device(device)
        verdicts = Verdicts()
        for backend in registry.ordered(prefer, restrict):
            verdict = _verdict(backend, desc, device)
            verdicts.append(verdict)
            if verdict.accepted:
                return cls(desc, device, backend, backend.build(desc, device))
        raise NoPlanError(f"no backend accepts this problem on {device}:\n{verdicts}", verdicts)

    @classmethod
    def from_sku(cls, desc: AttentionDescriptor, sku: KernelSku, device=None) -> "Plan":
        """Exactly the kernel `sku` names, or SkuMismatch saying why it cannot be had."""
        device = as_device(device)
        try:
            backend = registry.get(sku.backend)
        except KeyError as exc:
            raise SkuMismatch(str(exc)) from None
        verdict = _verdict(backend, desc, device)
        if not verdict.accepted:
            raise SkuMismatch(f"backend {sku.backend!r} rejects this problem: {'; '.join(verdict.reasons)}")
        if sku.arch != device.arch_name:
            raise SkuMismatch(f"SKU is for {sku.arch}, device is {device.arch_name}")
        if sku.dtype != desc.dtype:
            raise SkuMismatch(f"SKU is for dtype {sku.dtype}, descriptor has {desc.dtype}")
        try:
            executable = backend.build(desc, device, sku.config_dict)
        except (ValueError, KeyError, TypeError) as exc:
            raise SkuMismatch(f"backend {sku.backend!r} cannot build the pinned config {sku.config_dict}: {exc}") from None
        plan = cls(desc, device, backend, executable)
        if plan.sku.identity() != sku.identity():
            raise SkuMismatch(f"backend built {plan.sku.kernel} {plan.sku.config_dict}, "
                              f"pinned SKU is {sku.kernel} {sku.config_dict}")
        return plan

    # -- what it is --------------------------------------------------------------------------

    @property
    def sku(self) -> KernelSku:
        return self._executable.sku

    @property
    def workspace_size(self) -> int:
        return self._executable.workspace_size

    def __repr__(self) -> str:
        return f"Plan({self.sku.backend}:{self.sku.kernel} on {self.device})"

    # -- running -----------------------------------------------------------------------------

    def can_implement(self, check_values: bool = True, **args) -> BoundArguments:
        """Check the arguments against the plan; raise InvalidArguments naming the culprit."""
        return self._bind(args, check_values)

    def _bind(self, args: dict, check_values: bool) -> BoundArguments:
        bound = bind_arguments(self.desc, args, check_values=check_values)
        on_cuda = self.device.kind == "cuda"
        if bound.is_cuda != on_cuda:
            raise InvalidArguments("q", f"lives on {'a GPU' if bound.is_cuda else 'the host'}, "
                                        f"but the plan is for {self.device}")
        if on_cuda and self.device.present and bound.q.device_index != self.device.index:
            raise InvalidArguments("q", f"lives on cuda:{bound.q.device_index}, plan is for cuda:{self.device.index}")
        if self._executable.check_arguments is not None:
            self._executable.check_arguments(bound)
        if bound.workspace is not None and bound.workspace.data.nbytes < self.workspace_size:
            raise InvalidArguments("workspace", f"holds {bound.workspace.data.nbytes} bytes, "
                                                f"the plan needs {self.workspace_size}")
        return bound

    def run(self, check_values: bool = True, **args):
        """Forward: returns AttentionResult(out, lse).  Backward: (dq, dk, dv[, dsink_logits]).
        Outputs come back in the caller's array type."""
        bound = self._bind(args, check_values)
        if self.desc.direction == "backward":
            return self._run_backward(bound)
        desc, q = self.desc, bound.q
        out = bound.out
        if out is None:
            out = wrap_storage(empty(q.shape[:-1] + (desc.head_dim_v,), desc.out_dtype, q), desc.out_dtype)
        lse = bound.lse
        if lse is None and desc.return_lse:
            lse = wrap_storage(empty(lse_shape(desc, q.shape[0]), lse_dtype(desc.dtype), q), lse_dtype(desc.dtype))
        self._executable.forward(bound, out, lse)
        result_out = args["out"] if args.get("out") is not None else to_caller(out.data, out.dtype, q)
        result_lse = None
        if lse is not None:
            result_lse = args["lse"] if args.get("lse") is not None else to_caller(lse.data, lse.dtype, q)
        return AttentionResult(result_out, result_lse)

    def _run_backward(self, bound: BoundArguments):
        desc, q = self.desc, bound.q
        dq = wrap_storage(empty(bound.q.shape, desc.dtype, q), desc.dtype)
        dk = wrap_storage(empty(bound.k.shape, desc.dtype, q), desc.dtype)
        dv = wrap_storage(empty(bound.v.shape, desc.dtype, q), desc.dtype)
        dsink = wrap_storage(empty((desc.heads_q,), "f32", q), "f32") if desc.sink_logits else None
        self._executable.backward(bound, dq, dk, dv, dsink)
        grads = tuple(to_caller(t.data, t.dtype, q) for t in (dq, dk, dv))
        if dsink is not None:
            grads += (to_caller(dsink.data, "f32", q),)
        return grads


__all__ = ["Plan", "Verdict", "Verdicts", "explain", "AttentionResult"]
