"""The exceptions of attnplan's API: each names the field or argument at fault."""

from __future__ import annotations


class AttnPlanError(Exception):
    """Base class of every attnplan error."""


class InvalidDescriptor(AttnPlanError, ValueError):
    """An `AttentionDescriptor` field holds a value that is not allowed."""

    def __init__(self, field: str, value, allowed: str, owner: str = "AttentionDescriptor"):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{owner}.{field}={value!r} is invalid: {allowed}")


class InvalidPolicy(AttnPlanError, ValueError):
    """A planner policy (the `policy=` argument or $ATTNPLAN_POLICY) that does not exist."""

    def __init__(self, source: str, value, allowed: str):
        self.field, self.value, self.allowed = source, value, allowed
        super().__init__(f"{source}={value!r} is invalid: {allowed}")


class InvalidArguments(AttnPlanError, ValueError):
    """A run-time argument does not fit the plan (shape, dtype, stride, device, values)."""

    def __init__(self, argument: str, problem: str):
        self.argument, self.problem = argument, problem
        super().__init__(f"argument {argument!r}: {problem}")


class NoPlanError(AttnPlanError, RuntimeError):
    """No registered backend accepts the descriptor; the message lists every reason."""

    def __init__(self, message: str, verdicts=()):
        self.verdicts = tuple(verdicts)
        super().__init__(message)


class SkuMismatch(AttnPlanError, RuntimeError):
    """`Plan.from_sku` cannot give back the pinned kernel; the message says why."""


class KernelCompileError(AttnPlanError, RuntimeError):
    """NVRTC rejected a kernel; carries the dispatch key and the compiler log."""

    def __init__(self, kernel_name: str, log: str):
        self.kernel_name, self.log = kernel_name, log
        super().__init__(f"NVRTC failed to compile {kernel_name}:\n{log}")
