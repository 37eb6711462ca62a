"""The one registry of backends, in preference order (fastest first, reference last)."""

from __future__ import annotations

import importlib

from .backend import Backend

# (module, class) of the built-in backends, fastest first.  Imported lazily: a backend's
# module must import without GPU libraries, and reports missing ones as reasons.
_BUILTIN = (
    ("attnplan.backends.nvrtc", "NvrtcBackend"),
    ("attnplan.backends.cudnn", "CudnnBackend"),
    ("attnplan.backends.reference", "ReferenceBackend"),
)

_backends: list[Backend] = []
_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name, class_name in _BUILTIN:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:   # that backend is not part of this build yet
                continue
            raise
        if getattr(module, "__file__", None) is None:   # a bare folder: backend not built yet
            continue
        register(getattr(module, class_name)())


def register(backend: Backend, *, first: bool = False) -> None:
    """Add a backend (last, or first); a backend of the same name is replaced."""
    global _backends
    _backends = [b for b in _backends if b.name != backend.name]
    if first:
        _backends.insert(0, backend)
    else:
        _backends.append(backend)


def backends() -> list[Backend]:
    _load_builtin()
    return list(_backends)


def get(name: str) -> Backend:
    for backend in backends():
        if backend.name == name:
            return backend
    raise KeyError(f"no backend named {name!r}; registered: {', '.join(b.name for b in backends())}")


def ordered(prefer=None, restrict: bool = False) -> list[Backend]:
    """Backends in the order to try: `prefer` (a name or names) first, then the rest
    unless `restrict`."""
    if prefer is None:
        return backends()
    names = [prefer] if isinstance(prefer, str) else list(prefer)
    chosen = [get(name) for name in names]
    if restrict:
        return chosen
    return chosen + [b for b in backends() if b.name not in names]
