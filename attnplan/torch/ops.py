"""The custom ops `attnplan::attention` and `attnplan::attention_backward`.

Each op is opaque to the compiler: torch.compile, torch.export and FakeTensor see only the schema and
the fake (shapes and dtypes); the real kernel (planner, plan cache, `plan.run`) runs at run time, never
under tracing.  The schema holds every tensor argument and, as plain scalars, every descriptor keyword,
so one call of the op is one descriptor.  The forward's autograd saves `out` and `lse` (LSE is always
computed when a gradient may be needed) and runs our backward plans through the backward op.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from typing import Optional

import torch
from torch import Tensor

from ..api import _cached_plan, describe
from ..device import Device
from ..dtypes import dtype_name, lse_dtype, output_dtype
from ..plan import Plan
from ..sku import KernelSku

NAMESPACE = "attnplan"
# Our dtype names -> torch dtypes (the fake and the real kernel allocate the same outputs).
TORCH_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64,
                "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
# Optional per-call tensors shared by the forward and the backward, in schema order.
RUN_TENSORS = ("alibi_slopes", "bias", "sink_logits", "cu_seqlens_q", "cu_seqlens_kv", "block_table",
               "seqlens_kv", "dropout_seed")
FP8_TENSORS = ("descale_q", "descale_k", "descale_v", "scale_o")
# Descriptor keywords shared by the forward and the backward (window travels as two ints: a schema
# default cannot be a list), then how the plan is chosen.
OPTIONS = ("causal", "causal_alignment", "window_left", "window_right", "sink_tokens", "softcap", "scale",
           "dropout_p", "max_seqlen_q", "max_seqlen_kv", "layout", "deterministic", "backend", "policy", "sku")
UINT64 = (1 << 64) - 1


# -- what both the fake and the real kernel produce ---------------------------------------------------

def _lse_shape(q_shape, layout: str) -> tuple:
    if layout == "thd":
        return (q_shape[1], q_shape[0])                      # [heads_q, total_q]
    if layout == "bhsd":
        return tuple(q_shape[:3])                            # [batch, heads_q, seqlen_q]
    return (q_shape[0], q_shape[2], q_shape[1])


def _forward_outputs(q: Tensor, v: Tensor, layout: str, return_lse: bool, out_dtype: Optional[str],
                     return_amax: bool) -> tuple:
    """Fresh (out, lse, amax); an output not asked for is an empty [0] tensor."""
    name = dtype_name(q.dtype) or str(q.dtype)
    out_type = TORCH_DTYPES.get(out_dtype or output_dtype(name), q.dtype)   # a bad out_dtype: describe says so
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],), dtype=out_type)
    lse = q.new_empty(_lse_shape(q.shape, layout) if return_lse else (0,), dtype=TORCH_DTYPES[lse_dtype(name)])
    amax = q.new_empty((1,) if return_amax else (0,), dtype=torch.float32)
    return out, lse, amax


# -- running the planner (run time only) --------------------------------------------------------------

def _device(q: Tensor) -> Device:
    return Device.cuda(q.device.index) if q.is_cuda else Device.cpu()


@functools.lru_cache(maxsize=64)
def _pinned_skus(sku_json: str) -> tuple:
    """The `sku` option: one SKU's JSON object (the forward's), or a list of two (forward, backward)."""
    data = json.loads(sku_json)
    return tuple(KernelSku.from_dict(item) for item in (data if isinstance(data, list) else [data]))


@functools.lru_cache(maxsize=64)
def _pinned_plan(desc, device: Device, sku: KernelSku) -> Plan:
    return Plan.from_sku(desc, sku, device)


def _plan(desc, q: Tensor, backend: Optional[str], policy: Optional[str], sku: Optional[str]) -> Plan:
    """The planner's choice for this descriptor (cached per descriptor), or the pinned SKU's plan.  A
    backward whose forward alone was pinned runs on the pinned SKU's backend, as the planner chooses."""
    device = _device(q)
    if sku is None:
        return _cached_plan(desc, device, backend, policy)
    pinned = _pinned_skus(sku)
    if desc.direction == "forward" or len(pinned) > 1:
        return _pinned_plan(desc, device, pinned[0 if desc.direction == "forward" else 1])
    return _cached_plan(desc, device, pinned[0].backend, policy)


@contextlib.contextmanager
def _on_current_stream(q: Tensor):
    """Everything attnplan enqueues for this call (kernels, CuPy allocations and math) goes on
    PyTorch's current stream of q's device."""
    if not q.is_cuda:
        yield
        return
    import cupy
    stream = torch.cuda.current_stream(q.device)
    with cupy.cuda.Device(q.device.index), cupy.cuda.ExternalStream(stream.cuda_stream, q.device.index):
        yield


def _inner_contiguous(x: Optional[Tensor]) -> Optional[Tensor]:
    """Our plans need a unit innermost stride; anything else (a transpose, a broadcast gradient) is copied."""
    if x is None or x.dim() == 0 or x.shape[-1] <= 1 or x.stride(-1) == 1:
        return x
    return x.contiguous()


def _workspace(plan: Plan, q: Tensor) -> Optional[Tensor]:
    """The plan's workspace from PyTorch's allocator (stream-ordered, and private to a CUDA graph while
    one is captured), so the kernels allocate nothing of their own for it."""
    return q.new_empty((plan.workspace_size,), dtype=torch.uint8) if plan.workspace_size else None


def _run_arguments(tensors: dict) -> dict:
    """The plan's keyword arguments: given tensors (inner-contiguous), the seed as an unsigned int."""
    run = {name: _inner_contiguous(t) for name, t in tensors.items() if t is not None and name != "dropout_seed"}
    seed = tensors.get("dropout_seed")
    if seed is not None:
        run["dropout_seed"] = int(seed.item()) & UINT64      # a CPU scalar: no device synchronisation
    return run


def _describe(q, k, v, tensors: dict, options: dict, **extra):
    return describe(q, k, v, causal=options["causal"], causal_alignment=options["causal_alignment"],
                    window=(options["window_left"], options["window_right"]), sink_tokens=options["sink_tokens"],
                    softcap=options["softcap"], scale=options["scale"], dropout_p=options["dropout_p"],
                    max_seqlen_q=options["max_seqlen_q"], max_seqlen_kv=options["max_seqlen_kv"],
                    layout=options["layout"], deterministic=options["deterministic"],
                    **{name: tensors[name] for name in RUN_TENSORS[:7]}, **extra)


# -- the forward op -----------------------------------------------------------------------------------

def _attention(q: Tensor, k: Tensor, v: Tensor,
               alibi_slopes: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               sink_logits: Optional[Tensor] = None, cu_seqlens_q: Optional[Tensor] = None,
               cu_seqlens_kv: Optional[Tensor] = None, block_table: Optional[Tensor] = None,
               seqlens_kv: Optional[Tensor] = None, dropout_seed: Optional[Tensor] = None,
               descale_q: Optional[Tensor] = None, descale_k: Optional[Tensor] = None,
               descale_v: Optional[Tensor] = None, scale_o: Optional[Tensor] = None,
               causal: bool = False, causal_alignment: str = "bottom_right", window_left: int = -1,
               window_right: int = -1, sink_tokens: int = 0, softcap: float = 0.0, scale: Optional[float] = None,
               dropout_p: float = 0.0, max_seqlen_q: Optional[int] = None, max_seqlen_kv: Optional[int] = None,
               layout: str = "bshd", deterministic: bool = False, backend: Optional[str] = None,
               policy: Optional[str] = None, sku: Optional[str] = None, return_lse: bool = False,
               out_dtype: Optional[str] = None, return_amax: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(out, lse, amax_o) of docs/semantics.md; lse and amax_o are empty [0] unless asked for.
    `dropout_seed` is an int64 CPU scalar (the unsigned seed's bits)."""
    arguments = locals()
    options = {name: arguments[name] for name in OPTIONS}
    tensors = {name: arguments[name] for name in RUN_TENSORS + FP8_TENSORS}
    q, k, v = (_inner_contiguous(x) for x in (q, k, v))
    with _on_current_stream(q):
        desc = _describe(q, k, v, tensors, options, return_lse=return_lse, out_dtype=out_dtype)
        plan = _plan(desc, q, backend, policy, sku)
        out, lse, amax = _forward_outputs(q, v, layout, return_lse, out_dtype, return_amax)
        plan.run(q=q, k=k, v=v, out=out, lse=lse if return_lse else None, amax_o=amax if return_amax else None,
                 workspace=_workspace(plan, q), **_run_arguments(tensors))
    return out, lse, amax


_FORWARD_SIGNATURE = inspect.signature(_attention)
FORWARD_NAMES = tuple(_FORWARD_SIGNATURE.parameters)
attention_op = torch.library.custom_op(f"{NAMESPACE}::attention", _attention, mutates_args=())


@attention_op.register_fake
def _attention_fake(*inputs, **keywords):
    a = _forward_arguments(inputs, keywords)
    return _forward_outputs(a["q"], a["v"], a["layout"], a["return_lse"], a["out_dtype"], a["return_amax"])


def _forward_arguments(inputs: tuple, keywords: dict) -> dict:
    """Every argument of the forward op by name, defaults filled in."""
    bound = _FORWARD_SIGNATURE.bind(*inputs, **keywords)
    bound.apply_defaults()
    return bound.arguments


# -- the backward op ----------------------------------------------------------------------------------

def _attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        alibi_slopes: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                        sink_logits: Optional[Tensor] = None, cu_seqlens_q: Optional[Tensor] = None,
                        cu_seqlens_kv: Optional[Tensor] = None, block_table: Optional[Tensor] = None,
                        seqlens_kv: Optional[Tensor] = None, dropout_seed: Optional[Tensor] = None,
                        causal: bool = False, causal_alignment: str = "bottom_right", window_left: int = -1,
                        window_right: int = -1, sink_tokens: int = 0, softcap: float = 0.0,
                        scale: Optional[float] = None, dropout_p: float = 0.0, max_seqlen_q: Optional[int] = None,
                        max_seqlen_kv: Optional[int] = None, layout: str = "bshd", deterministic: bool = False,
                        backend: Optional[str] = None, policy: Optional[str] = None,
                        sku: Optional[str] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dsink_logits); dsink_logits is empty [0] without sink logits."""
    arguments = locals()
    options = {name: arguments[name] for name in OPTIONS}
    tensors = {name: arguments[name] for name in RUN_TENSORS}
    q, k, v, out, dout = (_inner_contiguous(x) for x in (q, k, v, out, dout))
    with _on_current_stream(q):
        desc = _describe(q, k, v, tensors, options, direction="backward")
        plan = _plan(desc, q, backend, policy, sku)
        grads = plan.run(q=q, k=k, v=v, out=out, lse=lse, dout=dout, workspace=_workspace(plan, q),
                         **_run_arguments(tensors))
    dsink = grads[3] if len(grads) > 3 else q.new_empty((0,), dtype=torch.float32)
    return grads[0], grads[1], grads[2], dsink


attention_backward_op = torch.library.custom_op(f"{NAMESPACE}::attention_backward", _attention_backward,
                                                mutates_args=())


@attention_backward_op.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, alibi_slopes=None, bias=None, sink_logits=None,
                             *args, **kwargs):
    dsink = (sink_logits.shape[0],) if sink_logits is not None else (0,)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            q.new_empty(dsink, dtype=torch.float32))


# -- autograd -----------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    arguments = dict(zip(FORWARD_NAMES, inputs))
    out, lse, amax = output
    ctx.mark_non_differentiable(lse, amax)       # as PyTorch's fused attention: the LSE carries no gradient
    ctx.save_for_backward(arguments["q"], arguments["k"], arguments["v"], out, lse,
                          *(arguments[name] for name in RUN_TENSORS))
    ctx.options = {name: arguments[name] for name in OPTIONS}
    ctx.out_dtype = arguments["out_dtype"]


def _backward(ctx, grad_out, grad_lse, grad_amax):
    q, k, v, out, lse, *run = ctx.saved_tensors
    tensors = dict(zip(RUN_TENSORS, run))
    if lse.dim() == 1:      # called without return_lse (torch.ops directly): recompute it
        out, lse, _ = attention_op(q, k, v, **tensors, **ctx.options, return_lse=True, out_dtype=ctx.out_dtype)
    dq, dk, dv, dsink = attention_backward_op(grad_out, q, k, v, out, lse, **tensors, **ctx.options)
    grads = dict.fromkeys(FORWARD_NAMES)
    grads.update(q=dq, k=dk, v=dv, sink_logits=dsink if tensors["sink_logits"] is not None else None)
    return tuple(grads[name] for name in FORWARD_NAMES)


attention_op.register_autograd(_backward, setup_context=_setup_context)


# -- vmap ---------------------------------------------------------------------------------------------

def _vmap_attention(info, in_dims, *inputs, **keywords):
    """Dense problems whose mapped arguments are only q, k, v fold the mapped dim into the batch dim
    (one call); anything else runs one call per slice."""
    arguments, dims = _forward_arguments(inputs, keywords), dict.fromkeys(FORWARD_NAMES)
    dims.update(zip(FORWARD_NAMES, in_dims))
    size = info.batch_size
    bias, slopes = arguments["bias"], arguments["alibi_slopes"]
    fold = arguments["layout"] != "thd" and arguments["block_table"] is None and not arguments["return_amax"] \
        and all(dims[name] is None for name in FORWARD_NAMES[3:]) \
        and (bias is None or bias.shape[0] == 1) and (slopes is None or slopes.dim() == 1)   # nothing per batch
    if fold:
        for name in ("q", "k", "v"):
            x = arguments[name]
            x = x.movedim(dims[name], 0) if dims[name] is not None else x.expand((size,) + tuple(x.shape))
            arguments[name] = x.reshape((-1,) + tuple(x.shape[2:]))
        out, lse, amax = attention_op(**arguments)
        lse = lse.reshape((size, -1) + tuple(lse.shape[1:])) if arguments["return_lse"] else lse
        return (out.reshape((size, -1) + tuple(out.shape[1:])), lse, amax), \
            (0, 0 if arguments["return_lse"] else None, None)
    slices = [attention_op(**{name: value.select(dims[name], i) if dims[name] is not None else value
                              for name, value in arguments.items()}) for i in range(size)]
    return tuple(torch.stack(parts) for parts in zip(*slices)), (0, 0, 0)


attention_op.register_vmap(_vmap_attention)
