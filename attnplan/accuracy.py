"""Error metrics against the float64 reference (FlashAttention's rule: a kernel's error is at
most 2x the error of the same computation done in the kernel's own dtype, plus an epsilon)."""

from __future__ import annotations

import numpy as np

from .interop import Tensor, as_tensor, to_float


def host_f64(x) -> np.ndarray:
    """Any array (NumPy, CuPy, torch, raw bf16 storage) as a float64 NumPy array."""
    t = x if isinstance(x, Tensor) else as_tensor(x, "array")
    values = to_float(t, "f64")
    return values.get() if t.is_cuda else values


def max_abs_error(x, ref) -> float:
    a, b = host_f64(x), host_f64(ref)
    finite = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), finite) or not np.array_equal(a[~finite], b[~finite]):
        return float("inf")        # infinities (empty rows' LSE) must match exactly; NaN never passes
    return float(np.abs(a[finite] - b[finite]).max(initial=0.0))


def relative_l2_error(x, ref) -> float:
    a, b = host_f64(x), host_f64(ref)
    finite = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), finite):
        return float("inf")
    norm = np.linalg.norm(b[finite])
    return float(np.linalg.norm(a[finite] - b[finite]) / (norm if norm > 0 else 1.0))


def within_tolerance(kernel_error: float, same_dtype_error: float, epsilon: float = 1e-5) -> bool:
    return kernel_error <= 2.0 * same_dtype_error + epsilon
