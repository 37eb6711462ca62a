"""Peer implementations measured beside ours in the same run: PyTorch SDPA's flash, cuDNN,
memory-efficient and math backends (rows named `torch.<kind>`), when PyTorch is installed."""

from __future__ import annotations

from typing import Optional

from attnplan.interop import Tensor, as_tensor

from .contenders import Prepared, _timed_first_call

TORCH_KINDS = {"torch.flash": "FLASH_ATTENTION", "torch.cudnn": "CUDNN_ATTENTION",
               "torch.efficient": "EFFICIENT_ATTENTION", "torch.math": "MATH"}


DEFAULT_PEERS = ("torch.flash", "torch.cudnn", "torch.efficient")   # torch.math on request: O(s^2) memory


def available_peers() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    return list(DEFAULT_PEERS) if torch.cuda.is_available() else []


def peer_reason(name: str, desc) -> Optional[str]:
    """Why peer `name` cannot run `desc` as we define it, or None."""
    if name not in TORCH_KINDS:
        return f"unknown peer {name!r} (known: {sorted(TORCH_KINDS)})"
    if desc.dtype not in ("f16", "bf16", "f32"):
        return f"dtype {desc.dtype} not supported by PyTorch SDPA"
    if desc.varlen or desc.paged is not None or desc.has_window or desc.alibi or desc.softcap or desc.sink_tokens \
            or desc.sink_logits or desc.dropout_p:
        return "PyTorch SDPA has no varlen / paged / window / ALiBi / softcap / sink / seeded-dropout form of ours"
    if desc.causal and desc.seqlen_q != desc.seqlen_kv and desc.causal_alignment == "bottom_right":
        return "is_causal is top-left aligned"
    if desc.layout != "bshd":
        return "benchmarks feed peers bshd"
    return None


def to_torch(x, dtype: str):
    """A zero-copy torch view of a CuPy array / attnplan Tensor holding `dtype` values."""
    import torch
    t = as_tensor(x, "x") if not isinstance(x, Tensor) else x
    raw = torch.from_dlpack(t.data)
    target = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    return raw.view(target) if raw.dtype != target else raw


def prepare_torch(name: str, desc, input_sets: list[dict], fixed: list[dict]) -> Prepared:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    kind = getattr(SDPBackend, TORCH_KINDS[name])
    gqa = desc.heads_q != desc.heads_kv
    # bshd storage seen as [b, h, s, d] views, as FlashAttention's own benchmarks do.
    views = [{k: to_torch(s[k], desc.dtype).transpose(1, 2) for k in ("q", "k", "v")} for s in input_sets]
    results: dict[int, dict] = {}

    def attend(q, k, v):
        with sdpa_kernel([kind]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=desc.causal, scale=desc.scale,
                                                  enable_gqa=gqa)

    if desc.direction == "forward":
        def build():
            def launch(i):
                v = views[i]
                results[i] = {"out": attend(v["q"], v["k"], v["v"]).transpose(1, 2)}
            return launch
    else:
        graphs = []
        for i, v in enumerate(views):
            q, k, vv = (v[n].detach().requires_grad_() for n in ("q", "k", "v"))
            graphs.append((q, k, vv, to_torch(fixed[i]["dout"], desc.dtype).transpose(1, 2)))

        def build():
            outs = {}

            def launch(i):
                q, k, v, dout = graphs[i]
                if i not in outs:                  # the forward graph is built once, outside the timing
                    outs[i] = attend(q, k, v)
                dq, dk, dv = torch.autograd.grad(outs[i], (q, k, v), dout, retain_graph=True)
                results[i] = {"dq": dq.transpose(1, 2), "dk": dk.transpose(1, 2), "dv": dv.transpose(1, 2)}
            for i in range(len(graphs)):          # forward graphs first: only backward is timed
                q, k, v, _ = graphs[i]
                outs[i] = attend(q, k, v)
            return launch

    launch, first = _timed_first_call(build)
    return Prepared(name, None, first, launch, lambda i: results[i])
