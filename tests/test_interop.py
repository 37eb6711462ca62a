"""Arrays in, arrays out on the CPU: NumPy (every dtype, ml_dtypes bf16/fp8), foreign arrays that only
speak DLPack (viewed zero-copy, answered in NumPy), caller-provided `out` / `lse`, streams, and
PyTorch CPU tensors when PyTorch is installed."""

import ml_dtypes
import numpy as np
import pytest

import attnplan
from attnplan import AttentionDescriptor, InvalidArguments, Plan
from attnplan.interop import as_tensor
from attnplan.streams import stream_handle

import brute_force

BF16, E4M3, E5M2 = (np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2))


class DLPackOnly:
    """A foreign host array that exposes nothing but the DLPack protocol (like a JAX CPU array)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, *args, **kwargs):
        return self._array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class DLPackOnGpu(DLPackOnly):
    """Claims to live on a CUDA device (kDLCUDA = 2)."""

    def __dlpack_device__(self):
        return (2, 0)


def qkv(dtype=np.float64, seed=0, shape=(2, 6, 2, 8), kv_len=7):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(shape)
    k, v = rng.standard_normal((2,) + (shape[0], kv_len) + shape[2:])
    return [x.astype(dtype) for x in (q, k, v)]


# -- NumPy -------------------------------------------------------------------------------------------

def test_numpy_f64_in_numpy_f64_out():
    q, k, v = qkv()
    out, lse = attnplan.attention(q, k, v, causal=True, return_lse=True)
    assert type(out) is np.ndarray and type(lse) is np.ndarray
    assert out.dtype == np.float64 and lse.dtype == np.float64
    want_out, want_lse = brute_force.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-13)


def test_numpy_f32_in_f32_out():
    q, k, v = qkv(np.float32)
    out, lse = attnplan.attention(q, k, v, return_lse=True)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    # the reference computes in f64 and rounds once: exactly the f64 answer rounded to f32
    want_out, want_lse = attnplan.attention(*(x.astype(np.float64) for x in (q, k, v)), return_lse=True)
    np.testing.assert_array_equal(out, want_out.astype(np.float32))
    np.testing.assert_array_equal(lse, want_lse.astype(np.float32))


@pytest.mark.parametrize("dtype, out_dtype", [(np.dtype(np.float16), np.dtype(np.float16)), (BF16, BF16),
                                              (E4M3, BF16), (E5M2, BF16)], ids=["f16", "bf16", "e4m3", "e5m2"])
def test_low_precision_numpy_round_trip(dtype, out_dtype):
    q, k, v = qkv(dtype)
    out, lse = attnplan.attention(q, k, v, causal=True, return_lse=True)
    assert type(out) is np.ndarray and out.dtype == out_dtype and out.shape == q.shape
    assert lse.dtype == np.float32
    # the inputs' exact values, in f64, then rounded to the output dtype once
    want_out, want_lse = attnplan.attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True,
                                            return_lse=True)
    np.testing.assert_array_equal(out, want_out.astype(out_dtype))
    np.testing.assert_array_equal(lse, want_lse.astype(np.float32))
    assert np.abs(want_out).max() > 0.1


def test_inputs_are_not_modified_and_read_only_inputs_are_fine():
    q, k, v = qkv(np.float32)
    copies = [x.copy() for x in (q, k, v)]
    for x in (q, k, v):
        x.flags.writeable = False
    out = attnplan.attention(q, k, v, softcap=2.0)
    for x, original in zip((q, k, v), copies):
        np.testing.assert_array_equal(x, original)
    assert out.flags.writeable and not np.shares_memory(out, q)


def test_unsupported_inputs_name_the_argument():
    q, k, v = qkv(np.float32)
    with pytest.raises(InvalidArguments) as info:
        attnplan.attention(q.tolist(), k, v)
    assert info.value.argument == "q" and "NumPy" in str(info.value)
    with pytest.raises(InvalidArguments) as info:
        attnplan.attention(q, "k", v)
    assert info.value.argument == "k"
    with pytest.raises(InvalidArguments) as info:                    # integers are not an attention dtype
        attnplan.attention(*(x.astype(np.int32) for x in (q, k, v)))
    assert info.value.argument == "q" and "holds int32 elements" in str(info.value)
    plan = Plan.select(AttentionDescriptor(batch=2, seqlen_q=6, seqlen_kv=7, heads_q=2, heads_kv=2, head_dim=8,
                                           dtype="f32"), "cpu")
    with pytest.raises(InvalidArguments) as info:
        plan.run(q=q, k=k, v=v.astype(BF16))
    assert info.value.argument == "v" and "bf16" in str(info.value)


# -- DLPack ------------------------------------------------------------------------------------------

def test_cpu_dlpack_array_is_viewed_zero_copy():
    q, _, _ = qkv(np.float32)
    t = as_tensor(DLPackOnly(q), "q")
    assert t.origin == "dlpack" and not t.is_cuda and t.dtype == "f32"
    assert isinstance(t.data, np.ndarray) and np.shares_memory(t.data, q) and t.shape == q.shape
    strided = q[:, ::2]
    assert np.shares_memory(as_tensor(DLPackOnly(strided), "q").data, q)
    assert as_tensor(DLPackOnly(strided), "q").strides == as_tensor(strided, "q").strides


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_cpu_dlpack_inputs_give_numpy_results(dtype):
    q, k, v = qkv(dtype)
    out, lse = attnplan.attention(DLPackOnly(q), DLPackOnly(k), DLPackOnly(v), causal=True, return_lse=True)
    assert type(out) is np.ndarray and type(lse) is np.ndarray and out.dtype == np.dtype(dtype)
    want_out, want_lse = attnplan.attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(lse, want_lse)


def test_cpu_dlpack_mixed_with_numpy_and_index_arrays():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((5, 2, 4)).astype(np.float32)
    k, v = rng.standard_normal((2, 6, 1, 4)).astype(np.float32)
    cu_q, cu_kv = np.array([0, 2, 5], np.int32), np.array([0, 4, 6], np.int32)
    out = attnplan.attention(DLPackOnly(q), k, DLPackOnly(v), layout="thd", cu_seqlens_q=DLPackOnly(cu_q),
                             cu_seqlens_kv=cu_kv)
    want = attnplan.attention(q, k, v, layout="thd", cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, want)


def test_cpu_dlpack_out_is_written_in_place():
    q, k, v = qkv(np.float32)
    buffer = np.full(q.shape, np.nan, np.float32)
    given = DLPackOnly(buffer)
    result = attnplan.attention(DLPackOnly(q), DLPackOnly(k), DLPackOnly(v), out=given)
    assert result is given
    np.testing.assert_array_equal(buffer, attnplan.attention(q, k, v))


def test_gpu_dlpack_array_without_a_gpu_is_rejected_by_name():
    q, k, v = qkv(np.float32)
    if attnplan.device.default_device().kind == "cuda":
        pytest.skip("a GPU is present")
    with pytest.raises(InvalidArguments) as info:
        attnplan.attention(DLPackOnGpu(q), k, v)
    assert info.value.argument == "q" and "DLPack" in str(info.value)


def test_dlpack_without_a_bf16_code_is_rejected_by_name():
    q, k, v = qkv(BF16)
    with pytest.raises(InvalidArguments) as info:
        attnplan.attention(DLPackOnly(q), k, v)
    assert info.value.argument == "q"


# -- out= and lse= -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, out_dtype", [(np.float32, np.float32), (np.float64, np.float64), (BF16, BF16),
                                              (E4M3, BF16)], ids=["f32", "f64", "bf16", "e4m3"])
def test_out_is_written_in_place_and_returned(dtype, out_dtype):
    q, k, v = qkv(dtype)
    out = np.zeros(q.shape, out_dtype)
    result = attnplan.attention(q, k, v, out=out, causal=True)
    assert result is out
    np.testing.assert_array_equal(out, attnplan.attention(q, k, v, causal=True))
    assert np.abs(out.astype(np.float64)).max() > 0


def test_strided_out_view_is_filled_and_nothing_else():
    q, k, v = qkv(np.float32)
    storage = np.full((2, 6, 2, 16), -7.0, np.float32)
    view = storage[..., 4:12]                         # outer strides of a larger array, unit inner stride
    result = attnplan.attention(q, k, v, out=view)
    assert result is view
    np.testing.assert_array_equal(storage[..., 4:12], attnplan.attention(q, k, v))
    assert (storage[..., :4] == -7).all() and (storage[..., 12:] == -7).all()


def test_lse_buffer_is_written_in_place():
    q, k, v = qkv(np.float32)
    plan = Plan.select(AttentionDescriptor(batch=2, seqlen_q=6, seqlen_kv=7, heads_q=2, heads_kv=2, head_dim=8,
                                           dtype="f32", return_lse=True), "cpu")
    out, lse = np.empty(q.shape, np.float32), np.empty((2, 2, 6), np.float32)
    result = plan.run(q=q, k=k, v=v, out=out, lse=lse)
    assert result.out is out and result.lse is lse
    _, want_lse = attnplan.attention(q, k, v, return_lse=True)
    np.testing.assert_array_equal(lse, want_lse)


def test_out_of_the_wrong_kind_is_named():
    q, k, v = qkv(E4M3)
    with pytest.raises(InvalidArguments) as info:
        attnplan.attention(q, k, v, out=np.zeros(q.shape, E4M3))       # fp8 attention writes bf16
    assert info.value.argument == "out" and "expected bf16" in str(info.value)
    q, k, v = qkv(np.float32)
    with pytest.raises(InvalidArguments) as info:
        attnplan.attention(q, k, v, out=np.zeros((2, 6, 2, 7), np.float32))
    assert info.value.argument == "out"


def test_read_only_out_is_named():
    q, k, v = qkv(np.float32)
    out = np.zeros(q.shape, np.float32)
    out.flags.writeable = False
    with pytest.raises(InvalidArguments) as info:
        attnplan.attention(q, k, v, out=out)
    assert info.value.argument == "out"


# -- streams ---------------------------------------------------------------------------------------

class HasCudaStream:
    cuda_stream = 1234


class HasProtocol:
    def __init__(self, value):
        self.value = value

    def __cuda_stream__(self):
        return self.value


def test_stream_handles():
    assert stream_handle(0) == 0 and stream_handle(77) == 77
    assert stream_handle(HasCudaStream()) == 1234
    assert stream_handle(HasProtocol((0, 555))) == 555            # (version, handle)
    assert stream_handle(HasProtocol(99)) == 99


@pytest.mark.parametrize("bad", [True, False, "default", 1.5, object()], ids=repr)
def test_bad_streams_are_named(bad):
    with pytest.raises(InvalidArguments) as info:
        stream_handle(bad)
    assert info.value.argument == "stream" and type(bad).__name__ in str(info.value)


def test_cpu_run_with_a_stream_argument():
    q, k, v = qkv(np.float32)
    plan = Plan.select(AttentionDescriptor(batch=2, seqlen_q=6, seqlen_kv=7, heads_q=2, heads_kv=2, head_dim=8,
                                           dtype="f32"), "cpu")
    assert plan.can_implement(q=q, k=k, v=v, stream=None).stream is None
    np.testing.assert_array_equal(plan.run(q=q, k=k, v=v, stream=None).out, attnplan.attention(q, k, v))


# -- PyTorch (CPU) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["float32", "bfloat16"])
def test_torch_cpu_tensors_come_back_as_torch(name):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, name)
    q, k, v = (torch.from_numpy(x).to(dtype) for x in qkv(np.float32))
    out, lse = attnplan.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and tuple(out.shape) == tuple(q.shape)
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
    want = attnplan.attention(*(x.float().numpy().astype(np.float64) for x in (q, k, v)), causal=True)
    np.testing.assert_allclose(out.float().numpy(), want, atol=2e-2 if name == "bfloat16" else 1e-6)
