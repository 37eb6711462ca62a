"""cuDNN's fused attention (SDPA) graphs through the cuDNN frontend's Python API (`import cudnn`,
imported lazily: this package imports without any GPU library)."""

from .backend import CudnnBackend

__all__ = ["CudnnBackend"]
