"""Our NVRTC-compiled FlashAttention kernels (CUDA C++ in attnplan/kernels)."""

from .backend import NvrtcBackend

__all__ = ["NvrtcBackend"]
