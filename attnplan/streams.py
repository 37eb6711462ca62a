"""CUDA stream handles from whatever the caller gives: None, an int, a CuPy stream, a PyTorch
stream, or any object with `cuda_stream` / `__cuda_stream__`."""

from __future__ import annotations

from .errors import InvalidArguments


def stream_handle(stream, origin: str = "cupy") -> int:
    """The raw `cudaStream_t` as an integer.  None means the caller framework's current stream."""
    if stream is None:
        if origin == "torch":
            import torch
            return int(torch.cuda.current_stream().cuda_stream)
        import cupy
        return int(cupy.cuda.get_current_stream().ptr)
    if isinstance(stream, bool):
        raise InvalidArguments("stream", "is a bool; expected a stream object or a raw handle")
    if isinstance(stream, int):
        return stream
    if hasattr(stream, "__cuda_stream__"):
        value = stream.__cuda_stream__()
        return int(value[1] if isinstance(value, tuple) else value)
    for attribute in ("cuda_stream", "ptr", "handle"):
        if hasattr(stream, attribute):
            return int(getattr(stream, attribute))
    raise InvalidArguments("stream", f"is a {type(stream).__name__}; expected None, an int handle, a CuPy or "
                                     "PyTorch stream, or an object with cuda_stream / __cuda_stream__")
