"""The binding fast path on CUDA arrays: a tensor `borrowed` from a CuPy or PyTorch array has the
same facts as the fully converted one, and its storage view is made only when read."""

from __future__ import annotations

import numpy as np
import pytest

from attnplan.dtypes import HOST_DTYPES
from attnplan.interop import array_reader, as_tensor

FACTS = ("dtype", "origin", "shape", "strides", "ptr", "device_index", "is_cuda")


def borrow(x):
    return array_reader(type(x))(x)[1]


def _same_facts(borrowed, converted):
    for fact in FACTS:
        assert getattr(borrowed, fact) == getattr(converted, fact), fact
    assert "data" not in borrowed.__dict__                  # nothing read the storage yet
    a, b = borrowed.data, converted.data                    # now it is made, and is the same view
    assert a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides and a.data.ptr == b.data.ptr


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32", "i32"])
def test_cupy_arrays_borrow_the_same_facts(dtype):
    import cupy
    host = {"i32": np.int32}.get(dtype) or HOST_DTYPES[dtype]
    base = cupy.zeros((3, 40, 6, 72), dtype=np.uint16 if dtype == "bf16" else host)
    if dtype == "bf16":
        base = base.view(HOST_DTYPES["bf16"])
    view = base[1:, ::2, 2:5]                               # offset pointer, outer strides
    _same_facts(borrow(view), as_tensor(view, "q"))


@pytest.mark.parametrize("name", ["bfloat16", "float16", "int32"])
def test_torch_tensors_borrow_the_same_facts(name):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    x = torch.zeros((3, 40, 6, 72), device="cuda", dtype=getattr(torch, name))[1:, ::2, 2:5]
    _same_facts(borrow(x), as_tensor(x, "q"))
