"""The exceptions of attnplan's API: each names the field or argument at fault."""

from __future__ import annotations


def _rebuild(cls, args: tuple, state: dict) -> "AttnPlanError":
    """An error as pickled: made without calling `cls.__init__` (whose parameters are not the message)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class AttnPlanError(Exception):
    """Base class of every attnplan error."""

    def __reduce__(self):
        # Subclasses take (field, value, ...) but pass only the message up, so the default reduce
        # (cls(*args)) cannot rebuild them: a failed process-pool worker would read as a crashed one.
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class InvalidDescriptor(AttnPlanError, ValueError):
    """An `AttentionDescriptor` field holds a value that is not allowed."""

    def __init__(self, field: str, value, allowed: str, owner: str = "AttentionDescriptor"):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{owner}.{field}={value!r} is invalid: {allowed}")


class InvalidOption(AttnPlanError, ValueError):
    """A command-line flag, an environment variable or an option argument holds a value that is not allowed."""

    def __init__(self, option: str, value, allowed: str):
        self.field, self.value, self.allowed = option, value, allowed
        super().__init__(f"{option}={value!r} is invalid: {allowed}")


class InvalidPolicy(InvalidOption):
    """A planner policy (the `policy=` argument or $ATTNPLAN_POLICY) that does not exist."""


class InvalidArguments(AttnPlanError, ValueError):
    """A run-time argument does not fit the plan (shape, dtype, stride, device, values)."""

    def __init__(self, argument: str, problem: str):
        self.argument, self.problem = argument, problem
        super().__init__(f"argument {argument!r}: {problem}")


class InvalidFile(AttnPlanError, ValueError):
    """A file given to attnplan (a bench results file, ...) cannot be read as what it should be."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class UnknownBackend(AttnPlanError, KeyError):
    """A backend name that no registered backend has (a KeyError too, for callers that catch one)."""

    def __init__(self, name: str, registered):
        self.field, self.value, self.allowed = "backend", name, ", ".join(registered)
        super().__init__(f"no backend named {name!r}; registered: {self.allowed}")

    def __str__(self) -> str:             # KeyError would quote the whole message
        return str(self.args[0])


class NoPlanError(AttnPlanError, RuntimeError):
    """No registered backend accepts the descriptor; the message lists every reason."""

    def __init__(self, message: str, verdicts=()):
        # The planner's Verdicts (a list with .of(name)); any other sequence is kept as a tuple.
        self.verdicts = verdicts if hasattr(verdicts, "of") else tuple(verdicts)
        super().__init__(message)


class SkuMismatch(AttnPlanError, RuntimeError):
    """`Plan.from_sku` cannot give back the pinned kernel; the message says why."""


class KernelCompileError(AttnPlanError, RuntimeError):
    """NVRTC rejected a kernel; carries the dispatch key and the compiler log."""

    def __init__(self, kernel_name: str, log: str):
        self.kernel_name, self.log = kernel_name, log
        super().__init__(f"NVRTC failed to compile {kernel_name}:\n{log}")


class CacheWarning(UserWarning):
    """An on-disk cache (compiled kernels, autotune results) cannot be used as configured; attnplan
    goes on without storing (the warning names the folder or lock file, and the fix)."""
