"""Random, valid inputs for any descriptor (CLI `run`, benchmarks and GPU tests share them)."""

from __future__ import annotations

import numpy as np

from .arguments import lse_shape, sequence_dims
from .descriptor import AttentionDescriptor
from .device import Device
from .dtypes import HOST_DTYPES, lse_dtype, output_dtype


def _lengths(rng, batch: int, max_len: int, vary: bool) -> np.ndarray:
    if not vary:
        return np.full(batch, max_len, dtype=np.int64)
    lengths = rng.integers(1, max_len + 1, size=batch)
    lengths[0] = max_len                      # the descriptor's max is attained
    return lengths


def _cumulative(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def random_inputs(desc: AttentionDescriptor, device: Device, seed: int = 0, vary_lengths: bool = True) -> dict:
    """Keyword arguments for `plan.run` (forward, or backward with out/lse/dout filled from the
    reference when `desc.direction == "backward"` is not needed: callers compute those).
    Arrays are NumPy on the CPU and CuPy on a CUDA device."""
    rng = np.random.default_rng(seed)
    args: dict = {}
    q_lengths = _lengths(rng, desc.batch, desc.seqlen_q, desc.varlen and vary_lengths)
    kv_lengths = _lengths(rng, desc.batch, desc.seqlen_kv, (desc.varlen or desc.paged is not None) and vary_lengths)

    def tensor(shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(HOST_DTYPES[desc.dtype])

    # The leading dims the plan expects; the one free dim (total tokens, page count) is filled in.
    q_shape, kv_shape = sequence_dims(desc, "q"), sequence_dims(desc, "kv")
    if desc.layout == "thd":
        args["cu_seqlens_q"] = _cumulative(q_lengths)
        q_shape = (int(q_lengths.sum()),) + q_shape[1:]
    if desc.paged is not None:
        max_pages = desc.paged.max_pages_per_seq
        num_pages = desc.batch * max_pages
        args["block_table"] = rng.permutation(num_pages).astype(np.int32).reshape(desc.batch, max_pages)
        args["seqlens_kv"] = kv_lengths.astype(np.int32)
        kv_shape = (num_pages,) + kv_shape[1:]
    elif desc.layout == "thd":
        args["cu_seqlens_kv"] = _cumulative(kv_lengths)
        kv_shape = (int(kv_lengths.sum()),) + kv_shape[1:]
    args["q"] = tensor(q_shape + (desc.head_dim,))
    args["k"] = tensor(kv_shape + (desc.head_dim,))
    args["v"] = tensor(kv_shape + (desc.head_dim_v,))
    if desc.alibi:
        # The usual geometric slopes 2^(-8 h / H).
        args["alibi_slopes"] = (2.0 ** (-8.0 * np.arange(1, desc.heads_q + 1) / desc.heads_q)).astype(np.float32)
    if desc.bias:
        args["bias"] = tensor((desc.batch, desc.heads_q, desc.seqlen_q, desc.seqlen_kv))
    if desc.sink_logits:
        args["sink_logits"] = rng.standard_normal(desc.heads_q).astype(np.float32)
    if desc.dropout_p > 0:
        args["dropout_seed"] = int(rng.integers(0, 2**63))
    if desc.direction == "backward":
        out_shape = q_shape + (desc.head_dim_v,)
        args["dout"] = rng.standard_normal(out_shape, dtype=np.float32).astype(HOST_DTYPES[desc.out_dtype])
    if device.kind == "cuda":
        import cupy
        with cupy.cuda.Device(device.index):
            args = {name: _to_device(value, cupy) for name, value in args.items()}
    return args


def _to_device(value, cupy):
    if not isinstance(value, np.ndarray):
        return value
    if value.dtype in (HOST_DTYPES["bf16"],):
        return cupy.asarray(value.view(np.uint16)).view(HOST_DTYPES["bf16"]) if _cupy_knows_bf16(cupy) \
            else _raw_device(value, cupy)
    if value.dtype in (HOST_DTYPES["e4m3"], HOST_DTYPES["e5m2"]):
        return _raw_device(value, cupy)
    return cupy.asarray(value)


def _cupy_knows_bf16(cupy) -> bool:
    try:
        cupy.zeros(1, dtype=np.uint16).view(HOST_DTYPES["bf16"])
        return True
    except Exception:
        return False


def _raw_device(value, cupy):
    """A device array whose logical dtype CuPy may not know: wrap via attnplan.interop."""
    from .interop import Tensor
    width = np.uint16 if value.dtype.itemsize == 2 else np.uint8
    dtype = {2: "bf16"}.get(value.dtype.itemsize) or ("e4m3" if value.dtype == HOST_DTYPES["e4m3"] else "e5m2")
    return Tensor(cupy.asarray(value.view(width)), dtype, "cupy", None)


__all__ = ["random_inputs", "lse_shape", "output_dtype", "lse_dtype"]
