"""Zero-copy views of caller arrays (NumPy, CuPy, PyTorch, any DLPack or CUDA-array-interface
object), the float conversions the reference needs, and the way back to the caller's type.

On the GPU, bf16 and fp8 are kept as raw 16/8-bit integer storage: we never depend on the array
library knowing those types, and the kernels only need pointers.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Optional

import numpy as np

from .dtypes import HOST_DTYPES, dtype_name
from .errors import InvalidArguments

_RAW_STORAGE = {"bf16": np.uint16, "e4m3": np.uint8, "e5m2": np.uint8, "f16": np.float16,
                "f32": np.float32, "f64": np.float64}
_INDEX_DTYPES = {np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}


def _cupy():
    import cupy
    return cupy


class Tensor:
    """A caller array seen as (storage array, logical dtype, where it came from).  Its facts
    (device, shape, strides, pointer) are computed once: they are read on every call.

    A tensor `borrowed` on the binding fast path knows its facts from the caller's array alone; its
    storage view (`data`, e.g. a raw uint16 view of a bf16 array) is made only if something reads it
    (kernels need only the pointer)."""

    def __init__(self, data: Any, dtype: str, origin: str, source: Any = None):
        if data is not None:
            self.__dict__["data"] = data       # numpy.ndarray or cupy.ndarray (raw storage for bf16/fp8 on cupy)
        self.dtype = dtype                     # "f16", "bf16", ..., "i32"/"i64" for index arrays, "other:<x>"
        self.origin = origin                   # "numpy", "cupy", "torch", "jax", "dlpack", "internal"
        self.source = source

    @classmethod
    def borrowed(cls, source: Any, dtype: str, origin: str, shape: tuple, raw_strides: tuple, stride_unit: int,
                 ptr: int, device_index: int) -> "Tensor":
        """A CUDA tensor whose facts are given (strides as `raw_strides // stride_unit`, worked out
        if read); `data` is `as_tensor(source).data` when first read.  (Made without __init__: this
        runs for every argument of every call.)"""
        t = object.__new__(cls)
        t.__dict__ = {"dtype": dtype, "origin": origin, "source": source, "shape": shape,
                      "_raw_strides": (raw_strides, stride_unit), "ptr": ptr, "device_index": device_index,
                      "is_cuda": True}
        return t

    def __repr__(self) -> str:
        return f"Tensor({self.dtype}, shape={self.shape}, origin={self.origin})"

    @functools.cached_property
    def data(self):
        return as_tensor(self.source, "array").data

    @functools.cached_property
    def is_cuda(self) -> bool:
        return type(self.data).__module__.startswith("cupy")

    @property
    def xp(self):
        return _cupy() if self.is_cuda else np

    @functools.cached_property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @functools.cached_property
    def strides(self) -> tuple:
        """Strides in elements."""
        raw = self.__dict__.get("_raw_strides")
        if raw is not None:
            return tuple(s // raw[1] for s in raw[0])
        item = self.data.dtype.itemsize
        return tuple(s // item for s in self.data.strides)

    @functools.cached_property
    def ptr(self) -> int:
        return int(self.data.data.ptr) if self.is_cuda else int(self.data.ctypes.data)

    @functools.cached_property
    def device_index(self) -> int:
        return int(self.data.device.id) if self.is_cuda else -1


def readable_dtype(logical: str) -> str:
    """A Tensor's dtype as a user knows it: "int32" for our "i32", "uint32" for "other:uint32"."""
    return {"i32": "int32", "i64": "int64"}.get(logical, logical.removeprefix("other:"))


def _logical_dtype(np_dtype) -> str:
    np_dtype = np.dtype(np_dtype)
    if np_dtype in _INDEX_DTYPES:
        return _INDEX_DTYPES[np_dtype]
    return dtype_name(np_dtype) or f"other:{np_dtype}"


def _from_torch(x, name: str) -> Tensor:
    import torch
    logical = dtype_name(x.dtype) or _logical_dtype(str(x.dtype).removeprefix("torch."))
    raw = {"bf16": torch.int16, "e4m3": torch.uint8, "e5m2": torch.uint8}.get(logical)
    storage = x.view(raw) if raw is not None else x
    if x.is_cuda:
        data = _cupy().from_dlpack(storage.detach())
        if raw is torch.int16:
            data = data.view(np.uint16)
    else:
        data = storage.detach().numpy()
        if raw is not None:
            data = data.view(HOST_DTYPES[logical])
    return Tensor(data, logical, "torch", x)


def as_tensor(x, name: str) -> Tensor:
    """View `x` without copying; raise InvalidArguments naming `name` for anything else."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return Tensor(x, _logical_dtype(x.dtype), "numpy", x)
    module = type(x).__module__
    if module.startswith("cupy"):
        logical = _logical_dtype(x.dtype)
        raw = _RAW_STORAGE.get(logical)      # bf16/fp8 are kept as raw bits on the GPU
        return Tensor(x.view(raw) if raw is not None and x.dtype != raw else x, logical, "cupy", x)
    if module.startswith("torch"):
        return _from_torch(x, name)
    if module.startswith(("jax", "jaxlib")):
        return _from_jax(x, name)
    if hasattr(x, "__dlpack__") and _dlpack_on_host(x):
        try:
            data = np.from_dlpack(x)
        except Exception as exc:
            raise InvalidArguments(name, f"could not be viewed through DLPack: {exc}") from exc
        return Tensor(data, _logical_dtype(data.dtype), "dlpack", x)
    if hasattr(x, "__dlpack__") or hasattr(x, "__cuda_array_interface__"):
        try:
            cp = _cupy()
            data = cp.from_dlpack(x) if hasattr(x, "__dlpack__") else cp.asarray(x)
        except Exception as exc:
            raise InvalidArguments(name, f"could not be viewed through DLPack: {exc}") from exc
        return Tensor(data, _logical_dtype(data.dtype), "dlpack", x)
    raise InvalidArguments(
        name, f"is a {type(x).__name__}; expected a NumPy, CuPy, PyTorch or DLPack array")


def _from_jax(x, name: str) -> Tensor:
    """A JAX array: on the CPU a NumPy view (bf16 / fp8 through ml_dtypes, which JAX's own dtypes
    are), on a GPU a CuPy view through DLPack (bf16 / fp8 as their raw bits, which DLPack carries).
    A tracer (inside jax.jit, vmap, grad) holds no values: refused with what to do instead."""
    import jax
    if isinstance(x, jax.core.Tracer):
        raise InvalidArguments(name, "is a JAX tracer (the call is inside jax.jit, vmap or grad): attnplan does not "
                                     "support tracing yet; call it on concrete arrays, outside jit")
    if not isinstance(x, jax.Array):
        raise InvalidArguments(name, f"is a {type(x).__name__}; expected a NumPy, CuPy, PyTorch, JAX or DLPack array")
    devices = x.devices()
    if len(devices) != 1:
        raise InvalidArguments(name, f"is sharded over {len(devices)} devices; attnplan takes a single-device array")
    if next(iter(devices)).platform == "cpu":
        data = np.asarray(x)
        return Tensor(data, _logical_dtype(data.dtype), "jax", x)
    logical = dtype_name(x.dtype) or f"other:{x.dtype}"
    raw = _RAW_STORAGE.get(logical)
    try:
        cp = _cupy()
        source = jax.lax.bitcast_convert_type(x, raw) if raw is not None else x
        data = cp.from_dlpack(source)
    except Exception as exc:
        raise InvalidArguments(name, f"could not be viewed through DLPack: {exc}") from exc
    return Tensor(data, logical, "jax", x)


def _to_jax(storage, dtype: str, like: Tensor):
    """`storage` as a jax.Array on `like`'s device (the caller's type)."""
    import jax
    device = next(iter(like.source.devices()))
    if not like.is_cuda:
        return jax.device_put(storage, device)           # NumPy (ml_dtypes for bf16 / fp8) -> jax.Array
    raw = _RAW_STORAGE.get(dtype)
    bits = storage.view(raw) if raw is not None and storage.dtype != raw else storage
    out = jax.dlpack.from_dlpack(bits)
    return jax.lax.bitcast_convert_type(out, HOST_DTYPES[dtype]) if raw is not None else out


@functools.lru_cache(maxsize=None)
def _known_logical_dtype(np_dtype) -> str:
    return _logical_dtype(np_dtype)


@functools.lru_cache(maxsize=None)
def _torch_logical_dtype(torch_dtype) -> str:
    return dtype_name(torch_dtype) or _logical_dtype(str(torch_dtype).removeprefix("torch."))


# -- the binding fast path: an array's layout facts read in one pass, and a tensor borrowed from them --


def _read_numpy(x) -> tuple:
    return (x.dtype, x.shape, x.strides, x.flags.writeable), None


def _read_cupy(x) -> tuple:
    memory = x.data
    dtype, shape, strides, device = x.dtype, x.shape, x.strides, memory.device_id
    return (dtype, shape, strides, device), Tensor.borrowed(x, _known_logical_dtype(dtype), "cupy", shape, strides,
                                                            dtype.itemsize, memory.ptr, device)


def _read_torch(x) -> tuple:
    dtype, shape, strides, device = x.dtype, tuple(x.shape), x.stride(), x.device
    facts = (dtype, shape, strides, device, x.is_conj() or x.is_neg())
    if device.type != "cuda":
        return facts, None
    return facts, Tensor.borrowed(x, _torch_logical_dtype(dtype), "torch", shape, strides, 1, x.data_ptr(),
                                  device.index)


# Array type -> read(x): (facts, tensor or None).  The facts fix everything the structural checks look
# at; the tensor, where given, is x borrowed by pointer and layout (else as_tensor makes it).
_READERS: dict = {np.ndarray: _read_numpy}     # filled by array_reader
_UNSEEN = object()


def array_reader(kind: type) -> Optional[Callable]:
    """How the binding fast path reads arrays of type `kind`, or None (then every call is fully checked)."""
    reader = _READERS.get(kind, _UNSEEN)
    if reader is not _UNSEEN:
        return reader
    module = kind.__module__
    if module.startswith("cupy") and kind.__name__ == "ndarray":
        reader = _read_cupy
    elif module.startswith("torch") and hasattr(kind, "data_ptr") and hasattr(kind, "is_conj"):
        reader = _read_torch
    else:
        reader = None
    _READERS[kind] = reader
    return reader


_DLPACK_HOST_DEVICES = (1, 3)     # kDLCPU, kDLCUDAHost


def _dlpack_on_host(x) -> bool:
    try:
        return int(x.__dlpack_device__()[0]) in _DLPACK_HOST_DEVICES
    except Exception:
        return False


def as_host_index(x, name: str) -> np.ndarray:
    """A small index array (cu_seqlens, block tables) copied to the host for value checks."""
    t = as_tensor(x, name)
    return _cupy().asnumpy(t.data) if t.is_cuda else np.asarray(t.data)


# -- float conversions (the reference computes in f64 or f32) -----------------------------------

def to_float(t: Tensor, compute: str):
    """The values of `t` as f64 / f32 in its own array library."""
    xp, target = t.xp, np.float64 if compute == "f64" else np.float32
    data = t.data
    if not t.is_cuda or t.dtype in ("f16", "f32", "f64"):
        return data.astype(target)
    if t.dtype == "bf16":
        bits = data.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(target)
    if t.dtype in ("e4m3", "e5m2"):
        table = np.arange(256, dtype=np.uint8).view(HOST_DTYPES[t.dtype]).astype(np.float64)
        return xp.asarray(table.astype(target))[data.view(np.uint8)]
    raise TypeError(f"cannot convert {t.dtype} to float")


def from_float(values, dtype: str, xp):
    """Round float values to `dtype` storage (round-to-nearest-even)."""
    if xp is np or dtype not in ("bf16",) and dtype not in ("e4m3", "e5m2"):
        host = HOST_DTYPES[dtype] if xp is np else _RAW_STORAGE[dtype]
        return values.astype(host)
    if dtype == "bf16":
        bits = values.astype(np.float32).view(np.uint32)
        rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
        nan = xp.isnan(values)
        return xp.where(nan, 0x7FC0, rounded).astype(np.uint16)
    host = xp.asnumpy(values).astype(HOST_DTYPES[dtype])  # fp8 outputs are rare: round on host
    return xp.asarray(host.view(np.uint8))


def round_trip(values, dtype: str, xp):
    """`values` rounded to `dtype` and back to their float type (emulates low-precision storage)."""
    rounded = from_float(values, dtype, xp)
    return to_float(Tensor(rounded, dtype, "internal"), "f64" if values.dtype == np.float64 else "f32")


def empty(shape, dtype: str, like: Tensor):
    """Uninitialised storage for `dtype` on the same device as `like`."""
    if like.is_cuda:
        cp = _cupy()
        with cp.cuda.Device(like.device_index):
            return cp.empty(shape, dtype=_RAW_STORAGE.get(dtype, dtype))
    return np.empty(shape, dtype=HOST_DTYPES[dtype])


def wrap_storage(data, dtype: str, origin: str = "internal") -> Tensor:
    return Tensor(data, dtype, origin, None)


def to_caller(storage, dtype: str, like: Tensor):
    """Return `storage` (an array of `dtype`) in the array type the caller used for `like`."""
    if like.origin == "torch":
        import torch
        if like.is_cuda:
            raw = torch.from_dlpack(storage)
        else:
            narrow = {"bf16": np.int16, "e4m3": np.uint8, "e5m2": np.uint8}.get(dtype)
            raw = torch.from_numpy(storage.view(narrow) if narrow is not None else storage)
        target = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn,
                  "e5m2": torch.float8_e5m2}.get(dtype)
        return raw.view(target) if target is not None else raw
    if like.origin == "jax":
        return _to_jax(storage, dtype, like)
    if like.origin == "dlpack":
        top = sys.modules.get(type(like.source).__module__.split(".")[0])
        converter = getattr(top, "from_dlpack", None) or getattr(getattr(top, "numpy", None), "from_dlpack", None)
        if converter is not None and dtype not in ("bf16", "e4m3", "e5m2"):
            return converter(storage)
    if like.is_cuda and dtype in ("bf16", "e4m3", "e5m2"):
        try:
            return storage.view(HOST_DTYPES[dtype])
        except Exception:  # this CuPy does not know the type: hand back the raw bits
            return storage
    return storage
