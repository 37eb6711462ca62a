"""`Plan`: a descriptor bound to one backend's built kernel.  `select` and `explain` share
one loop over the registry; every rejected backend says why."""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

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
from .policy import DEFAULT_POLICY, Candidate, Ranking, rank, resolve_policy
from .sku import KernelSku
from .tuning import autotune
from .tuning.table import table_for, table_name
from .value_checks import check_mode, device_check_reason


@attrs.frozen
class Verdict:
    backend: str
    kernel: str
    accepted: bool                    # it can run here: capable, and this machine has what it needs
    reasons: tuple = ()
    capable: bool = True              # its capability checks accept (ranked even where not installed)
    estimate_tflops: Optional[float] = None
    estimate_us: Optional[float] = None
    estimate_source: str = ""         # the table cell and how it was read, or "" without an estimate
    measured_ms: Optional[float] = None       # autotune: the median measured on this device
    measured_tflops: Optional[float] = None


class Verdicts(list):
    """The verdict of every backend, printable as a table, with the policy's ranking: `ranking` lists
    the capable backends, best first; `choice` is the first of them that can run here (what
    `Plan.select` builds), or None; `why` says why it ranks first."""

    policy: str = DEFAULT_POLICY
    ranking: tuple = ()
    choice: Optional[str] = None
    why: str = ""

    def of(self, backend: str) -> Verdict:
        return next(v for v in self if v.backend == backend)

    def mark(self, backend: str) -> str:
        """The table's first column: "*" for the choice, else the rank (1 = best), "" when unranked."""
        if backend == self.choice:
            return "*"
        return str(self.ranking.index(backend) + 1) if backend in self.ranking else ""

    def __str__(self) -> str:
        rows = [("", "backend", "kernel", "TFLOP/s", "verdict")]
        for v in self:
            tflops = v.measured_tflops or v.estimate_tflops
            rows.append((self.mark(v.backend), v.backend, v.kernel, f"{tflops:.0f}" if tflops else "-",
                         "accepted" if v.accepted else "; ".join(v.reasons)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
        lines.append(f"policy {self.policy}: {self.choice or 'no choice'} ({self.why})")
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {"verdicts": [{"backend": v.backend, "kernel": v.kernel, "accepted": v.accepted,
                              "reasons": list(v.reasons), "estimate_tflops": v.estimate_tflops,
                              "estimate_us": v.estimate_us, "estimate_source": v.estimate_source,
                              "measured_ms": v.measured_ms, "measured_tflops": v.measured_tflops} for v in self],
                "policy": self.policy, "ranking": list(self.ranking), "choice": self.choice, "why": self.why}


UNVERIFIED_ENV = "ATTNPLAN_UNVERIFIED"      # comma-separated backend names (or "all") allowed past their gate


def _opted_in(name: str, prefer) -> bool:
    named = [prefer] if isinstance(prefer, str) else list(prefer or ())
    allowed = {n.strip() for n in os.environ.get(UNVERIFIED_ENV, "").split(",") if n.strip()}
    return name in named or name in allowed or "all" in allowed


def _verdict(backend: Backend, desc: AttentionDescriptor, device: Device, prefer=None) -> Verdict:
    reasons = capability_reasons(backend.capabilities, desc, device)
    if not reasons:
        reasons = backend.reasons(desc, device)
    if not reasons and not _opted_in(backend.name, prefer):
        reasons = backend.gate(desc, device)      # unverified code is not ranked until opted in
    capable = not reasons
    if capable:
        reasons = backend.availability(desc, device)
    kernel = backend.kernel_name(desc, device) if not reasons else "-"
    return Verdict(backend.name, kernel, not reasons, tuple(reasons), capable)


def _with_estimate(verdict: Verdict, desc: AttentionDescriptor, device: Device) -> Verdict:
    table = table_for(device.arch_name) if device.kind == "cuda" and device.arch is not None else None
    estimate = table.estimate(verdict.backend, desc) if table is not None and verdict.capable else None
    if estimate is None:
        return verdict
    return attrs.evolve(verdict, estimate_tflops=round(estimate.tflops, 1), estimate_us=round(estimate.us, 2),
                        estimate_source=estimate.source)


def assess(desc: AttentionDescriptor, device: Device, prefer=None, restrict: bool = False, policy=None,
           measure: bool = False, retune: bool = False) -> Verdicts:
    """Every backend's verdict and the policy's ranking.  With `measure`, the autotune policy times
    the candidates when its cache has no answer (or always, with `retune`); without, it reads the
    cache only."""
    policy = resolve_policy(policy)
    chosen = registry.ordered(prefer, restrict)
    verdicts = Verdicts(_with_estimate(_verdict(b, desc, device, prefer), desc, device) for b in chosen)
    by_name = {b.name: b for b in chosen}
    basis = f"the {table_name(device.arch_name)} table" if device.kind == "cuda" else "a table"
    times = {v.backend: v.estimate_us for v in verdicts}
    if policy == "autotune":
        tuned, note = autotune.ranking_times(desc, device, [v for v in verdicts if v.accepted], by_name, measure,
                                             retune)
        if tuned is not None:
            verdicts[:] = [attrs.evolve(v, measured_ms=tuned.get(v.backend, (None, None))[0],
                                        measured_tflops=tuned.get(v.backend, (None, None))[1]) for v in verdicts]
            times = {name: ms * 1e3 for name, (ms, _) in tuned.items()}
        basis = note
    default_order = {b.name: i for i, b in enumerate(registry.backends())}     # not the preferred order
    candidates = [Candidate(v.backend, default_order.get(v.backend, len(default_order)),
                            by_name[v.backend].precision(desc, device), by_name[v.backend].last_resort,
                            times.get(v.backend)) for v in verdicts if v.capable]
    measured = policy == "autotune" and any(v.measured_ms for v in verdicts)
    ranking = _preferred_first(rank(candidates, "first" if policy == "first" else "fastest", basis, measured), prefer)
    verdicts.policy, verdicts.ranking, verdicts.why = policy, ranking.order, ranking.why
    verdicts.choice = next((name for name in ranking.order if verdicts.of(name).accepted), None)
    passed = ranking.order[:ranking.order.index(verdicts.choice)] if verdicts.choice else ranking.order
    if passed:
        verdicts.why += f"; {', '.join(passed)} cannot run on this machine"
    return verdicts


def _preferred_first(ranking: Ranking, prefer) -> Ranking:
    """`prefer` wins over the policy: the named backends (or families) first, in the order named,
    each group in the policy's order."""
    if prefer is None:
        return ranking
    names = [prefer] if isinstance(prefer, str) else list(prefer)
    groups = [[n for n in ranking.order if registry.matches(n, [want])] for want in names]
    order = []
    for group in groups:
        order += [n for n in group if n not in order]
    order += [n for n in ranking.order if n not in order]
    why = ranking.why if order[:1] == list(ranking.order[:1]) else f"preferred: {', '.join(names)}; {ranking.why}"
    return attrs.evolve(ranking, order=tuple(order), why=why)


def explain(desc: AttentionDescriptor, device=None, prefer=None, policy=None, restrict: bool = False) -> Verdicts:
    """Why each registered backend accepts or rejects `desc` on `device`, with the estimates, the
    ranking and the choice `Plan.select` would make (autotune: from its cache, measuring nothing)."""
    return assess(desc, as_device(device), prefer, restrict, policy=policy)


def _backend_of(sku: KernelSku, desc: AttentionDescriptor, device: Device) -> Backend:
    """The backend a SKU names.  A SKU written before generations were registered apart names its
    family ("nvrtc"); the member whose kernel name it carries is meant."""
    members = registry.resolve(sku.backend)
    if len(members) == 1:
        return members[0]
    for backend in members:
        if _verdict(backend, desc, device, backend.name).capable and backend.kernel_name(desc, device) == sku.kernel:
            return backend
    raise KeyError(f"SKU backend {sku.backend!r} is a family; none of {[b.name for b in members]} builds {sku.kernel}")


class AttentionResult(NamedTuple):
    out: Any
    lse: Any


class Plan:
    """An executable plan.  Build with `Plan.select` or `Plan.from_sku`."""

    def __init__(self, desc: AttentionDescriptor, device: Device, backend: Backend, executable: Executable):
        self.desc, self.device, self.backend, self._executable = desc, device, backend, executable
        self.verdicts: Optional[Verdicts] = None        # set by select: every verdict and why this plan
        # The device-side index check (backends/index_guard.py): why there is none ("" where there is
        # one), and the guard, made at the first run that uses it.
        self.device_check_reason = device_check_reason(desc, device)
        self._guard = None
        self._reference: Optional[Executable] = None     # empty packed totals run on it (_empty_totals)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def select(cls, desc: AttentionDescriptor, device=None, prefer=None, restrict: bool = False,
               policy: Optional[str] = None) -> "Plan":
        """The best backend for `desc` by `policy` ("fastest", "first" or "autotune"; default
        $ATTNPLAN_POLICY, else "fastest").  `prefer` names backends (or families) to try first, or only
        with `restrict=True`; it wins over the policy.  `plan.verdicts` says why this one."""
        device = as_device(device)
        verdicts = assess(desc, device, prefer, restrict, policy, measure=True)
        if verdicts.choice is None:
            raise NoPlanError(f"no backend accepts this problem on {device}:\n{verdicts}", verdicts)
        backend = registry.get(verdicts.choice)
        plan = cls(desc, device, backend, backend.build(desc, device))
        plan.verdicts = verdicts
        return plan

    @classmethod
    def from_sku(cls, desc: AttentionDescriptor, sku: KernelSku, device=None) -> "Plan":
        """Exactly the kernel `sku` names, or SkuMismatch saying why it cannot be had."""
        device = as_device(device)
        try:
            backend = _backend_of(sku, desc, device)
        except KeyError as exc:
            raise SkuMismatch(str(exc)) from None
        verdict = _verdict(backend, desc, device, prefer=backend.name)      # a pinned SKU is an opt-in
        if not verdict.accepted:
            raise SkuMismatch(f"backend {sku.backend!r} rejects this problem: {'; '.join(verdict.reasons)}")
        if sku.arch != device.arch_name:
            raise SkuMismatch(f"SKU is for {sku.arch}, device is {device.arch_name}")
        if sku.dtype != desc.dtype:
            raise SkuMismatch(f"SKU is for dtype {sku.dtype}, descriptor has {desc.dtype}")
        try:
            executable = backend.build(desc, device, sku.config_dict)
        except ValueError as exc:       # a backend's "not this config" (a KeyError or TypeError is a bug: raised)
            raise SkuMismatch(f"backend {sku.backend!r} cannot build the pinned config {sku.config_dict}: {exc}") from None
        plan = cls(desc, device, backend, executable)
        if plan.sku.identity() != (backend.name,) + sku.identity()[1:]:      # a family name means its member
            raise SkuMismatch(f"backend built {plan.sku.kernel} {plan.sku.config_dict}, "
                              f"pinned SKU is {sku.kernel} {sku.config_dict}")
        return plan

    # -- what it is --------------------------------------------------------------------------

    @property
    def sku(self) -> KernelSku:
        return self._executable.sku

    @property
    def workspace_size(self) -> int:
        """Bytes a caller's `workspace=` must hold: the kernels' own, then (for a GPU plan that takes
        index arguments) the device-side index check's status word and safe copies."""
        if self.device_check_reason:
            return self._executable.workspace_size
        from attnplan.backends import index_guard
        return self._guard_offset() + index_guard.scratch_bytes(self.desc)

    def _guard_offset(self) -> int:
        from attnplan.backends import index_guard
        align = index_guard.ALIGN
        return (self._executable.workspace_size + align - 1) // align * align

    def _device_guard(self):
        if self._guard is None:
            from attnplan.backends import index_guard
            self._guard = index_guard.IndexGuard(self.desc, self.device.index, self.device.arch,
                                                 self._guard_offset())
        return self._guard

    def check(self) -> None:
        """Wait for the device-side index checks of the runs so far (every stream they ran on) and
        raise InvalidArguments naming the first argument one of them found broken; nothing to do
        where no run checked on the device."""
        if self._guard is not None:
            self._guard.check()

    def __repr__(self) -> str:
        return f"Plan({self.sku.backend}:{self.sku.kernel} on {self.device})"

    # -- running -----------------------------------------------------------------------------

    def can_implement(self, check_values=True, **args) -> BoundArguments:
        """Check the arguments against the plan; raise InvalidArguments naming the culprit.  The index
        values are read on the host unless `check_values` is False or "device" (nothing runs here)."""
        return self._bind(args, check_mode(check_values) in ("auto", "host"))

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

    def run(self, check_values=True, **args):
        """Forward: returns AttentionResult(out, lse).  Backward: (dq, dk, dv[, dsink_logits]), written
        into the caller's `dq=`, `dk=`, `dv=`, `dsink_logits=` where given (as `out=` and `lse=` for the
        forward).  Outputs come back in the caller's array type.  `check_values`: where the index arguments'
        values are checked (attnplan/value_checks.py): True (on the device for a GPU plan, which
        reports a broken one by a later run or by `check()`; else on the host), "device", "host",
        or False."""
        mode = check_mode(check_values)
        on_device = mode in ("auto", "device") and not self.device_check_reason
        if mode == "device" and not on_device:
            raise InvalidArguments("check_values", f"'device' is not possible for this plan: {self.device_check_reason}")
        bound = self._bind(args, mode == "host" or (mode == "auto" and not on_device))
        if on_device:
            self._device_guard().apply(bound)
        if self.desc.direction == "backward":
            return self._run_backward(bound, args)
        desc, q = self.desc, bound.q
        executable = self._reference_executable() if self._empty_totals(bound) else self._executable
        out = bound.out
        if out is None:
            out = wrap_storage(empty(q.shape[:-1] + (desc.head_dim_v,), desc.out_dtype, q), desc.out_dtype)
        lse = bound.lse
        if lse is None and desc.return_lse:
            lse = wrap_storage(empty(lse_shape(desc, q.shape[0]), lse_dtype(desc.dtype), q), lse_dtype(desc.dtype))
        executable.forward(bound, out, lse)
        result_out = args["out"] if args.get("out") is not None else to_caller(out.data, out.dtype, q)
        result_lse = None
        if lse is not None:
            result_lse = args["lse"] if args.get("lse") is not None else to_caller(lse.data, lse.dtype, q)
        return AttentionResult(result_out, result_lse)

    def _empty_totals(self, bound: BoundArguments) -> bool:
        """Whether packed (thd) queries or keys hold no rows at all: nothing for a kernel to map
        (an empty array has no strides a TMA map or a cuDNN graph takes)."""
        if self.desc.layout != "thd" or self.backend.name == "reference":
            return False
        return bound.q.shape[0] == 0 or (self.desc.paged is None and bound.k.shape[0] == 0)

    def _reference_executable(self) -> Executable:
        """The reference's build of this descriptor on this device: what empty totals run on (their
        outputs are defined, docs/semantics.md: no rows, or rows with no visible key), the same
        arrays in and out; made once."""
        if self._reference is None:
            self._reference = registry.get("reference").build(self.desc, self.device)
        return self._reference

    def _run_backward(self, bound: BoundArguments, args: dict):
        """The gradients, into the caller's `dq`, `dk`, `dv` (and `dsink_logits`) where given."""
        desc, q = self.desc, bound.q

        def output(given, shape, dtype):
            return given if given is not None else wrap_storage(empty(shape, dtype, q), dtype)
        dq = output(bound.dq, bound.q.shape, desc.dtype)
        dk = output(bound.dk, bound.k.shape, desc.dtype)
        dv = output(bound.dv, bound.v.shape, desc.dtype)
        dsink = output(bound.dsink_logits, (desc.heads_q,), "f32") if desc.sink_logits else None
        executable = self._reference_executable() if self._empty_totals(bound) else self._executable
        executable.backward(bound, dq, dk, dv, dsink)
        names = ("dq", "dk", "dv") + (("dsink_logits",) if dsink is not None else ())
        return tuple(args[name] if args.get(name) is not None else to_caller(t.data, t.dtype, q)
                     for name, t in zip(names, (dq, dk, dv, dsink)))


__all__ = ["Plan", "Verdict", "Verdicts", "explain", "assess", "AttentionResult"]
