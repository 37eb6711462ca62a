"""Our NVRTC-compiled FlashAttention kernels (CUDA C++ in attnplan/kernels), one candidate per
kernel generation (generations.py)."""

from .backend import NvrtcBackend, backends
from .generation import Generation, Module
from .generations import GENERATIONS

__all__ = ["GENERATIONS", "Generation", "Module", "NvrtcBackend", "backends"]
