"""The element types attnplan speaks, and their host (NumPy / ml_dtypes) forms."""

from __future__ import annotations

import ml_dtypes
import numpy as np

# Our names -> host dtype.  fp8 and bf16 come from ml_dtypes.
HOST_DTYPES: dict[str, np.dtype] = {
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
    "e5m2": np.dtype(ml_dtypes.float8_e5m2),
}
DTYPE_NAMES = tuple(HOST_DTYPES)
FP8_DTYPES = ("e4m3", "e5m2")
# The largest finite value of each fp8 format: fp8 outputs saturate to it.
FP8_LIMITS = {name: float(ml_dtypes.finfo(HOST_DTYPES[name]).max) for name in FP8_DTYPES}
ITEMSIZE = {name: dt.itemsize for name, dt in HOST_DTYPES.items()}

# Names that other libraries use for the same types (NumPy, PyTorch, JAX, DLPack strings).
_ALIASES = {
    "float16": "f16", "half": "f16", "bfloat16": "bf16", "float32": "f32", "float": "f32",
    "float64": "f64", "double": "f64", "float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2",
}


_NAME_CACHE: dict = {}


def dtype_name(dtype) -> str | None:
    """Our name for a NumPy dtype, a torch/jax dtype or a string; None if we do not know it.
    Memoised: it runs for every array of every call."""
    try:
        return _NAME_CACHE[dtype]
    except (KeyError, TypeError):
        pass
    text = str(dtype).removeprefix("torch.").removeprefix("dtype(").strip("')\"")
    name = text if text in HOST_DTYPES else _ALIASES.get(text)
    try:
        _NAME_CACHE[dtype] = name
    except TypeError:                      # unhashable dtype-like objects are simply not cached
        pass
    return name


def as_dtype_name(value):
    """A dtype object (torch.bfloat16, numpy.dtype("float32"), a JAX dtype) as our name; strings and
    anything unknown are returned unchanged, for the descriptor's validator to judge (strings must be
    our own names).  Reads the object's text: PyTorch is never imported."""
    if isinstance(value, str):
        return value
    return dtype_name(value) or value


def output_dtype(dtype: str) -> str:
    """The dtype of `out` for inputs of `dtype` (fp8 inputs give bf16 outputs)."""
    return "bf16" if dtype in FP8_DTYPES else dtype


def lse_dtype(dtype: str) -> str:
    return "f64" if dtype == "f64" else "f32"
