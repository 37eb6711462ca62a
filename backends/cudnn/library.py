"""The cuDNN frontend (`import cudnn`), loaded lazily, and one cuDNN handle per (thread, device).

Nothing here runs at import: `import attnplan` must work without any GPU library.  A missing
frontend, an unloadable libcudnn or a too-old one is reported as a reason string.
"""

from __future__ import annotations

import threading
from typing import Optional

from .mapping import MIN_BACKEND_TEXT, MIN_BACKEND_VERSION, version_text

_lock = threading.Lock()
_loaded = False
_module = None
_problem: Optional[str] = None
_local = threading.local()
# The exception cuDNN (frontend or backend) raises for a graph it does not support: its verdict.
NOT_SUPPORTED_ERROR = "cudnnGraphNotSupportedError"


def _load() -> None:
    global _loaded, _module, _problem
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _loaded = True
        try:
            import cudnn
        except Exception as exc:  # ImportError, or a broken install failing at import
            _problem = (f"the cuDNN frontend is not installed (pip install nvidia-cudnn-frontend, or from the "
                        f"attnplan checkout pip install -e '.[cuda13]' (or '.[cuda12]')): {type(exc).__name__}: {exc}")
            return
        try:
            version = int(cudnn.backend_version())
        except Exception as exc:
            _problem = f"libcudnn (cuDNN 9) could not be loaded by the cuDNN frontend: {type(exc).__name__}: {exc}"
            return
        if version <= 0:
            _problem = "libcudnn (cuDNN 9) could not be loaded by the cuDNN frontend"
            return
        if version < MIN_BACKEND_VERSION:
            _problem = f"cuDNN {version_text(version)} is too old: this backend needs cuDNN >= {MIN_BACKEND_TEXT}"
            return
        if not all(hasattr(cudnn, name) for name in ("pygraph", "diagonal_alignment", NOT_SUPPORTED_ERROR)):
            _problem = (f"the cuDNN frontend {getattr(cudnn, '__version__', '?')} is too old: it has no "
                        "diagonal-band SDPA graph API (needs nvidia-cudnn-frontend >= 1.10)")
            return
        _module = cudnn


def problem() -> Optional[str]:
    """Why cuDNN cannot be used in this process, or None."""
    _load()
    return _problem


def module():
    """The `cudnn` module; call only when `problem()` is None."""
    _load()
    if _module is None:
        raise RuntimeError(_problem or "cuDNN is not available")
    return _module


def not_supported_error() -> type:
    """cuDNN's not-supported exception, the only one that is a verdict on a graph; anything else
    raised while declaring or building one (ours or cuDNN's) is a bug, and is raised."""
    return getattr(module(), NOT_SUPPORTED_ERROR)


def backend_version() -> Optional[int]:
    """The loaded cuDNN library's version as cuDNN encodes it (91900 for 9.19.0); None when absent."""
    _load()
    try:
        import cudnn
        version = int(cudnn.backend_version())
    except Exception:
        return None
    return version if version > 0 else None


def versions() -> dict:
    """cuDNN library and frontend versions, for SKUs and `attnplan info` (empty when absent)."""
    _load()
    out = {}
    try:
        import cudnn
    except Exception:
        return out
    out["cudnn_frontend"] = str(getattr(cudnn, "__version__", "?"))
    version = backend_version()
    if version is not None:
        out["cudnn"] = version_text(version)
    return out


def handle(device_index: int, stream: Optional[int] = None):
    """This thread's cuDNN handle for `device_index` (cuDNN handles are not to be shared across
    threads), set to run on `stream` when one is given (cuDNN is told only when the stream changes)."""
    cudnn = module()
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    entry = handles.get(device_index)
    if entry is None:
        import cupy
        with cupy.cuda.Device(device_index):
            entry = [cudnn.create_handle(), None]
        handles[device_index] = entry
    if stream is not None and entry[1] != stream:
        cudnn.set_stream(entry[0], int(stream))
        entry[1] = stream
    return entry[0]
