"""The reference backend: the executable definition of every feature (NumPy or CuPy)."""

from __future__ import annotations

from typing import Optional

import numpy as np

import attnplan
from attnplan.backend import Backend, Executable
from attnplan.capabilities import Capabilities
from attnplan.descriptor import AttentionDescriptor
from attnplan.device import Device
from attnplan.dtypes import FP8_DTYPES, FP8_LIMITS
from attnplan.interop import as_host_index, from_float, round_trip, to_float
from attnplan.sequences import kv_view, lse_view, q_view, spans
from attnplan.sku import KernelSku, PrecisionGuarantee

from .math import SequenceInputs, backward_sequence, forward_sequence
from attnplan.install_hints import install_hint

COMPUTE_PRECISIONS = ("f64", "f32")


def _array_library(device: Device):
    if device.kind == "cuda":
        import cupy
        return cupy
    return np


class ReferenceExecutor:
    """Runs the reference math over every sequence of a bound call."""

    def __init__(self, desc: AttentionDescriptor, compute: str, emulate_dtype: bool = False):
        self.desc, self.compute, self.emulate_dtype = desc, compute, emulate_dtype

    def _sequences(self, bound):
        desc, xp = self.desc, bound.q.xp
        index = {name: as_host_index(getattr(bound, name), name) if getattr(bound, name) is not None else None
                 for name in ("cu_seqlens_q", "cu_seqlens_kv", "seqlens_kv", "block_table")}
        q, k, v = (self._descaled(t, descale) for t, descale in
                   ((bound.q, bound.descale_q), (bound.k, bound.descale_k), (bound.v, bound.descale_v)))
        slopes = to_float(bound.alibi_slopes, self.compute) if bound.alibi_slopes is not None else None
        sinks = to_float(bound.sink_logits, self.compute) if bound.sink_logits is not None else None
        bias = to_float(bound.bias, self.compute) if bound.bias is not None else None
        rounding = None
        if self.emulate_dtype and desc.dtype not in ("f32", "f64"):
            low = "bf16" if desc.is_fp8 else desc.dtype
            rounding = lambda values: round_trip(values, low, xp)  # noqa: E731
        for span in spans(desc, q.shape[0], k.shape[0], **index):
            seq_slopes = None
            if slopes is not None:
                seq_slopes = slopes if slopes.ndim == 1 else slopes[span.index]
            seq_bias = None if bias is None else bias[span.index if bias.shape[0] > 1 else 0]
            yield span, SequenceInputs(span.index, xp.ascontiguousarray(q_view(desc, q, span)),
                                       kv_view(desc, k, span), kv_view(desc, v, span), seq_slopes, sinks,
                                       seq_bias, rounding)

    def _descaled(self, t, descale):
        values = to_float(t, self.compute)
        return values if descale is None else values * to_float(descale, self.compute)

    def forward(self, bound, out, lse) -> None:
        desc, xp = self.desc, bound.q.xp
        scale_o = to_float(bound.scale_o, self.compute) if bound.scale_o is not None else None
        amax = xp.zeros((1,), dtype=np.float64)
        for span, seq in self._sequences(bound):
            seq_out, seq_lse = forward_sequence(desc, seq, bound.dropout_seed, xp)
            if seq_out.size:
                amax = xp.maximum(amax, xp.abs(seq_out).max())
            if desc.out_dtype in FP8_DTYPES:   # stored as O * scale_o, saturated to the format's range
                limit = FP8_LIMITS[desc.out_dtype]
                seq_out = xp.clip(seq_out if scale_o is None else seq_out * scale_o, -limit, limit)
            q_view(desc, out.data, span)[...] = from_float(seq_out, out.dtype, xp)
            if lse is not None:
                lse_view(desc, lse.data, span)[...] = seq_lse.astype(lse.data.dtype)
        if bound.amax_o is not None:
            bound.amax_o.data[...] = amax.astype(bound.amax_o.data.dtype)

    def backward(self, bound, dq, dk, dv, dsink) -> None:
        desc, xp = self.desc, bound.q.xp
        dout = to_float(bound.dout, self.compute)
        dk_total = xp.zeros(dk.shape, dtype=dout.dtype)
        dv_total = xp.zeros(dv.shape, dtype=dout.dtype)
        dsink_total = xp.zeros(desc.heads_q, dtype=dout.dtype)
        for span, seq in self._sequences(bound):
            grads = backward_sequence(desc, seq, xp.ascontiguousarray(q_view(desc, dout, span)),
                                      bound.dropout_seed, xp)
            q_view(desc, dq.data, span)[...] = from_float(grads[0], dq.dtype, xp)
            kv_view(desc, dk_total, span)[...] += grads[1]
            kv_view(desc, dv_total, span)[...] += grads[2]
            dsink_total += grads[3]
        dk.data[...] = from_float(dk_total, dk.dtype, xp)
        dv.data[...] = from_float(dv_total, dv.dtype, xp)
        if dsink is not None:
            dsink.data[...] = dsink_total.astype(dsink.data.dtype)


class ReferenceBackend(Backend):
    name = "reference"
    capabilities = Capabilities(devices=frozenset({"cpu", "cuda"}), empty=True)
    last_resort = True

    def availability(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        if device.kind == "cuda":
            try:
                import cupy  # noqa: F401
            except ImportError:
                return [f"CuPy is not installed ({install_hint('cuda13', 'cuda12')})"]
        return []

    def precision(self, desc: AttentionDescriptor, device: Device, compute: str = "f64") -> PrecisionGuarantee:
        return PrecisionGuarantee(math_precision=compute, accumulator=compute, deterministic=True, bit_stable=False)

    def kernel_name(self, desc: AttentionDescriptor, device: Device) -> str:
        library = "cupy" if device.kind == "cuda" else "numpy"
        return f"reference_{library}_{desc.direction}"

    def library_versions(self) -> dict:
        versions = {"numpy": np.__version__}
        try:
            import cupy
            versions["cupy"] = cupy.__version__
        except ImportError:
            pass
        return versions

    def build(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> Executable:
        config = config or {}
        compute = config.get("compute", "f64")
        emulate = bool(config.get("emulate_dtype", False))
        if compute not in COMPUTE_PRECISIONS:
            raise ValueError(f"reference config compute={compute!r} is invalid: one of {COMPUTE_PRECISIONS}")
        sku = KernelSku(backend=self.name, kernel=self.kernel_name(desc, device), arch=device.arch_name,
                        dtype=desc.dtype, precision=self.precision(desc, device, compute), config={"compute": compute, "emulate_dtype": emulate},
                        workspace_bytes=0,
                        versions={"attnplan": attnplan.__version__, **self.library_versions()},
                        notes="float64 reference; pin compute=f32 / emulate_dtype=True (P and dS rounded "
                              "to the input dtype) for the low-precision baseline of the tolerance rule")
        executor = ReferenceExecutor(desc, compute, emulate)
        return Executable(sku=sku, workspace_size=0, forward=executor.forward, backward=executor.backward)
