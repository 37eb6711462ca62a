"""The one registry of backends, in the default order (our kernels, cuDNN, the reference last).

A backend's name may have a family prefix: the nvrtc kernel generations register as `nvrtc.sm80`,
`nvrtc.sm90a`, ...; naming the family (`prefer="nvrtc"`) names all of its members.
"""

from __future__ import annotations

import importlib
import threading

from .backend import Backend

# (module, attribute) of the built-in backends, in the default order.  The attribute is a Backend
# class or a function returning a list of backends.  Imported lazily: a backend's module must import
# without GPU libraries, and reports missing ones as reasons.
_BUILTIN = (
    ("attnplan.backends.nvrtc", "backends"),
    ("attnplan.backends.cudnn", "CudnnBackend"),
    ("attnplan.backends.reference", "ReferenceBackend"),
)

_backends: list[Backend] = []
_loaded = False
# Held while loading: threads that call in a fresh process wait for the whole registry instead of
# seeing it half loaded.  Re-entrant: a backend's import may itself ask the registry.
_lock = threading.RLock()


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        found: list[Backend] = []
        for module_name, attribute in _BUILTIN:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name:   # that backend is not part of this build yet
                    continue
                raise
            if getattr(module, "__file__", None) is None:   # a bare folder: backend not built yet
                continue
            made = getattr(module, attribute)()
            found.extend(made if isinstance(made, (list, tuple)) else [made])
        for backend in found:
            _register(backend, first=False)
        _loaded = True


def _register(backend: Backend, first: bool) -> None:
    kept = [b for b in _backends if b.name != backend.name]
    _backends[:] = [backend] + kept if first else kept + [backend]


def register(backend: Backend, *, first: bool = False) -> None:
    """Add a backend (last, or first); a backend of the same name is replaced."""
    _load_builtin()
    with _lock:
        _register(backend, first)


def unregister(name: str) -> None:
    with _lock:
        _backends[:] = [b for b in _backends if b.name != name]


def backends() -> list[Backend]:
    _load_builtin()
    with _lock:
        return list(_backends)


def family(name: str) -> str:
    """`nvrtc.sm80` -> `nvrtc`; a name without a family is its own."""
    return name.split(".", 1)[0]


def resolve(name: str) -> list[Backend]:
    """The backends a name means: the one of that name, or every member of that family."""
    everyone = backends()
    exact = [b for b in everyone if b.name == name]
    if exact:
        return exact
    members = [b for b in everyone if family(b.name) == name]
    if members:
        return members
    raise KeyError(f"no backend named {name!r}; registered: {', '.join(b.name for b in everyone)} "
                   f"(a family name such as 'nvrtc' names all of its members)")


def get(name: str) -> Backend:
    """The one backend of that exact name."""
    for backend in backends():
        if backend.name == name:
            return backend
    from .errors import UnknownBackend
    raise UnknownBackend(name, [b.name for b in backends()])


def matches(name: str, wanted) -> bool:
    """Whether backend `name` is among `wanted` names or families."""
    return any(name == w or family(name) == w for w in wanted)


def ordered(prefer=None, restrict: bool = False) -> list[Backend]:
    """Backends in the order to try: `prefer` (names or families) first, in the order given, then
    the rest in the default order unless `restrict`."""
    if prefer is None:
        return backends()
    names = [prefer] if isinstance(prefer, str) else list(prefer)
    chosen: list[Backend] = []
    for name in names:
        chosen += [b for b in resolve(name) if b not in chosen]
    if restrict:
        return chosen
    return chosen + [b for b in backends() if b not in chosen]
