"""Our NVRTC-compiled FlashAttention kernels (CUDA C++ in attnplan/kernels)."""

from .backend import NvrtcBackend, backends

__all__ = ["NvrtcBackend", "backends"]
