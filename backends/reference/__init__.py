"""The reference backend: NumPy on the CPU, CuPy on the GPU, float64 by default."""

from .backend import ReferenceBackend

__all__ = ["ReferenceBackend"]
