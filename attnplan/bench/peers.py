"""Peer implementations measured beside ours in the same run, when installed: PyTorch SDPA's flash,
cuDNN, memory-efficient and math backends (`torch.<kind>`), FlashAttention's own package
(`flash_attn.fa2`, and `flash_attn.fa3` from flash_attn_interface on Hopper) and FlashInfer
(`flashinfer.prefill`).  Each peer runs only the problems whose semantics it shares with ours;
everything else is a reason, recorded in the results' `skipped` list."""

from __future__ import annotations

import importlib.util
from typing import Optional

from attnplan.interop import Tensor, as_tensor

from .contenders import Prepared, _timed_first_call

TORCH_KINDS = {"torch.flash": "FLASH_ATTENTION", "torch.cudnn": "CUDNN_ATTENTION",
               "torch.efficient": "EFFICIENT_ATTENTION", "torch.math": "MATH"}
FLASH_ATTN = {"flash_attn.fa2": ("flash_attn", "flash_attn_func"),
              "flash_attn.fa3": ("flash_attn_interface", "flash_attn_func")}
FLASHINFER = ("flashinfer.prefill",)
KNOWN = (*TORCH_KINDS, *FLASH_ATTN, *FLASHINFER)

DEFAULT_TORCH = ("torch.flash", "torch.cudnn", "torch.efficient")   # torch.math on request: O(s^2) memory


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_peers() -> list[str]:
    """The default peers of this machine: PyTorch SDPA (with CUDA), flash_attn, FlashInfer."""
    if not _installed("torch"):
        return []
    import torch
    if not torch.cuda.is_available():
        return []
    peers = list(DEFAULT_TORCH)
    peers += [name for name, (module, _) in FLASH_ATTN.items() if _installed(module)]
    peers += [name for name in FLASHINFER if _installed("flashinfer")]
    return peers


def _common_reason(desc) -> Optional[str]:
    if desc.dtype not in ("f16", "bf16"):
        return f"dtype {desc.dtype} not benchmarked against peers"
    if desc.layout != "bshd":
        return "benchmarks feed peers bshd"
    if desc.varlen or desc.paged is not None or desc.sink_tokens or desc.sink_logits or desc.dropout_p or desc.alibi:
        return "no varlen / paged / sink / seeded-dropout / run-time ALiBi form of ours in the peer harness"
    return None


def peer_reason(name: str, desc) -> Optional[str]:
    """Why peer `name` cannot run `desc` as we define it, or None."""
    if name not in KNOWN:
        return f"unknown peer {name!r} (known: {list(KNOWN)})"
    reason = _common_reason(desc)
    if reason:
        return reason
    if name in TORCH_KINDS:
        if desc.has_window or desc.softcap:
            return "PyTorch SDPA has no sliding window or softcap"
        if desc.causal and desc.seqlen_q != desc.seqlen_kv and desc.causal_alignment == "bottom_right":
            return "is_causal is top-left aligned"
        return None
    if desc.causal and desc.causal_alignment == "top_left" and desc.seqlen_q != desc.seqlen_kv:
        return f"{name} aligns causal masks bottom-right"
    if name in FLASHINFER:
        if desc.direction == "backward":
            return "FlashInfer has no backward"
        if desc.window[1] > 0 or (desc.has_window and not desc.causal):
            return "FlashInfer windows are left-only (causal)"
        if desc.head_dim != desc.head_dim_v:
            return "FlashInfer needs head_dim_v == head_dim"
    if name == "flash_attn.fa3" and desc.head_dim not in (64, 96, 128, 192, 256):
        return "FlashAttention-3 head dims are 64, 96, 128, 192, 256"
    return None


def to_torch(x, dtype: str):
    """A zero-copy torch view of a CuPy array / attnplan Tensor holding `dtype` values."""
    import torch
    t = as_tensor(x, "x") if not isinstance(x, Tensor) else x
    raw = torch.from_dlpack(t.data)
    target = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    return raw.view(target) if raw.dtype != target else raw


def prepare(name: str, desc, input_sets: list[dict], fixed: list[dict]) -> Prepared:
    if name in TORCH_KINDS:
        return _prepare_bshd(name, desc, input_sets, fixed, _torch_sdpa(name, desc))
    if name in FLASH_ATTN:
        module, function = FLASH_ATTN[name]
        attend = getattr(importlib.import_module(module), function)

        def call(q, k, v):
            result = attend(q, k, v, softmax_scale=desc.scale, causal=desc.causal, window_size=desc.window,
                            softcap=desc.softcap)
            return result[0] if isinstance(result, tuple) else result
        return _prepare_bshd(name, desc, input_sets, fixed, call)
    if name in FLASHINFER:
        return _prepare_flashinfer(name, desc, input_sets, fixed)
    raise ValueError(f"unknown peer {name!r}")


def _views(desc, input_sets):
    return [{k: to_torch(s[k], desc.dtype) for k in ("q", "k", "v")} for s in input_sets]


def _prepare_bshd(name: str, desc, input_sets, fixed, call) -> Prepared:
    """A peer called on [batch, seq, heads, dim] tensors: forward, or backward through autograd
    with the forward graph built outside the timing (only the backward is timed)."""
    import torch
    views = _views(desc, input_sets)
    results: dict[int, dict] = {}
    if desc.direction == "forward":
        def build():
            def launch(i):
                v = views[i]
                results[i] = {"out": call(v["q"], v["k"], v["v"])}
            return launch
    else:
        graphs = []
        for i, v in enumerate(views):
            q, k, vv = (v[n].detach().requires_grad_() for n in ("q", "k", "v"))
            graphs.append((q, k, vv, to_torch(fixed[i]["dout"], desc.dtype)))

        def build():
            outs = {i: call(*g[:3]) for i, g in enumerate(graphs)}

            def launch(i):
                q, k, v, dout = graphs[i]
                dq, dk, dv = torch.autograd.grad(outs[i], (q, k, v), dout, retain_graph=True)
                results[i] = {"dq": dq, "dk": dk, "dv": dv}
            return launch
    launch, first = _timed_first_call(build)
    return Prepared(name, None, first, launch, lambda i: results[i])


def _prepare_flashinfer(name: str, desc, input_sets, fixed) -> Prepared:
    """FlashInfer's batch prefill over ragged (here: equal-length) sequences: q [b*s, h, d]."""
    import flashinfer
    import torch
    views = _views(desc, input_sets)
    b, sq, skv = desc.batch, desc.seqlen_q, desc.seqlen_kv
    qo_indptr = torch.arange(0, (b + 1) * sq, sq, dtype=torch.int32, device="cuda")
    kv_indptr = torch.arange(0, (b + 1) * skv, skv, dtype=torch.int32, device="cuda")
    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    results: dict[int, dict] = {}

    def build():
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(qo_indptr, kv_indptr, desc.heads_q, desc.heads_kv, desc.head_dim, causal=desc.causal,
                     sm_scale=desc.scale, window_left=desc.window[0],
                     logits_soft_cap=desc.softcap or None, q_data_type=views[0]["q"].dtype)
        flat = [{n: v[n].reshape(-1, *v[n].shape[2:]) for n in ("q", "k", "v")} for v in views]

        def launch(i):
            f = flat[i]
            results[i] = {"out": wrapper.run(f["q"], f["k"], f["v"]).reshape(b, sq, desc.heads_q, -1)}
        return launch
    launch, first = _timed_first_call(build)
    return Prepared(name, None, first, launch, lambda i: results[i])


def _torch_sdpa(name: str, desc):
    """PyTorch SDPA restricted to one backend, called on bshd tensors: their [b, h, s, d] views go
    in, as in FlashAttention's own benchmarks, and the output comes back as a bshd view."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    kind = getattr(SDPBackend, TORCH_KINDS[name])
    gqa = desc.heads_q != desc.heads_kv

    def call(q, k, v):
        with sdpa_kernel([kind]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=desc.causal, scale=desc.scale, enable_gqa=gqa)
        return out.transpose(1, 2)
    return call
