"""The cuDNN backend: cuDNN v9 fused attention (SDPA) graphs through the cuDNN frontend's Python
API (`import cudnn`), on CuPy or any DLPack array; no PyTorch needed.

Support is decided when a plan is selected: `reasons` first rejects what cuDNN cannot express
exactly (see `mapping.semantic_reasons`), then builds the graph for the descriptor (validate,
operation graph, execution plans, support check, plan build) and turns cuDNN's not-supported
error into the verdict (any other exception is raised).  Built graphs are cached in process
(`graphs.GRAPHS`).
"""

from __future__ import annotations

from typing import Optional

import attnplan
from attnplan.backend import Backend, Executable
from attnplan.capabilities import Capabilities
from attnplan.descriptor import AttentionDescriptor
from attnplan.device import Device
from attnplan.sku import KernelSku, PrecisionGuarantee

from . import library
from .graphs import GRAPHS, BuiltGraph, GraphUnsupported
from .mapping import canonical_geometry, mask_spec, semantic_reasons, version_reasons
from .runner import CudnnRunner
from attnplan.install_hints import install_hint

MIN_ARCH = 80     # cuDNN's fused flash attention needs Ampere or newer

DROPOUT_NOTE = ("dropout uses cuDNN's own Philox generator (seed = dropout_seed, offset 0); its keep mask does "
                "NOT follow attnplan's counter-based Philox scheme, so values differ from the other backends "
                "(same statistics; the backward regenerates the forward's mask from the same seed)")


class CudnnBackend(Backend):
    name = "cudnn"
    # Flags for what cuDNN may take; exact semantic mismatches (ALiBi slopes, sink tokens, softcap,
    # fp8) are explained in `reasons`, and cuDNN itself judges the rest when the graph is built.
    capabilities = Capabilities(
        devices=frozenset({"cuda"}), min_arch=MIN_ARCH,
        dtypes=frozenset({"f16", "bf16", "e4m3", "e5m2"}),
        backward_dtypes=frozenset({"f16", "bf16"}),
        paged_backward=False,
    )

    # -- support ---------------------------------------------------------------------------

    def reasons(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        reasons = semantic_reasons(desc)
        if reasons or self.availability(desc, device):
            return reasons          # cuDNN's own support check needs the library and a present GPU
        version = library.backend_version()
        reasons = version_reasons(desc, version) if version is not None else []
        if reasons:
            return reasons
        try:
            GRAPHS.get(desc, device.index, canonical_geometry(desc))
        except GraphUnsupported as exc:
            return [f"cuDNN rejects the SDPA graph: {exc}"]
        return []

    def availability(self, desc: AttentionDescriptor, device: Device) -> list[str]:
        problem = library.problem()
        if problem:
            return [problem]
        if device.kind != "cuda":
            return [f"cuDNN runs on CUDA GPUs, not {device}"]
        if not device.present:
            return [f"cuDNN graphs are built for a present GPU; {device} is only described, so cuDNN's "
                    "support check cannot run"]
        try:
            import cupy  # noqa: F401
        except ImportError:
            return [f"CuPy is not installed ({install_hint('cuda13', 'cuda12')})"]
        return []

    def precision(self, desc: AttentionDescriptor, device: Device) -> PrecisionGuarantee:
        # Forward: flash attention without atomics, one plan -> the same bits run to run.  Backward:
        # cuDNN's default algorithm may accumulate dQ in any order; only with its deterministic
        # algorithm (requested when desc.deterministic) is run-to-run bit equality promised.
        deterministic = bool(desc.deterministic) if desc.direction == "backward" else True
        return PrecisionGuarantee(math_precision=desc.dtype, accumulator="f32", deterministic=deterministic,
                                  bit_stable=False)

    def kernel_name(self, desc: AttentionDescriptor, device: Device) -> str:
        return f"cudnn_sdpa_{'bprop' if desc.direction == 'backward' else 'fprop'}"

    def library_versions(self) -> dict:
        return library.versions()

    # -- building --------------------------------------------------------------------------

    def build(self, desc: AttentionDescriptor, device: Device, config: Optional[dict] = None) -> Executable:
        pinned = (config or {}).get("plan")
        built = self._built(desc, device, pinned)
        if pinned is not None and built.plan_name != pinned:
            built = self._built(desc, device, None)      # pinned plan unavailable: from_sku says so
        runner = CudnnRunner(desc, built, built.plan_name if pinned is not None else None)
        sku = self._sku(desc, device, built)
        if desc.direction == "backward":
            return Executable(sku=sku, workspace_size=built.workspace_size, backward=runner.backward,
                              check_arguments=runner.check_arguments)
        return Executable(sku=sku, workspace_size=built.workspace_size, forward=runner.forward,
                          check_arguments=runner.check_arguments)

    def _built(self, desc: AttentionDescriptor, device: Device, plan_name: Optional[str]) -> BuiltGraph:
        try:
            return GRAPHS.get(desc, device.index, canonical_geometry(desc), plan_name)
        except GraphUnsupported as exc:
            if plan_name is None:
                raise RuntimeError(f"cuDNN rejects the SDPA graph: {exc}") from None
            return GRAPHS.get(desc, device.index, canonical_geometry(desc), None)

    def _sku(self, desc: AttentionDescriptor, device: Device, built: BuiltGraph) -> KernelSku:
        backward = desc.direction == "backward"
        precision = self.precision(desc, device)
        spec = mask_spec(desc)
        notes = [f"cuDNN v9 SDPA graph, plan {built.plan_name} ({built.served_by}); softmax stats = "
                 "natural-log LSE in fp32"]
        if desc.causal or desc.has_window:
            notes.append(f"diagonal band {spec.alignment}, left_bound={spec.left_bound}, "
                         f"right_bound={spec.right_bound}")
        if backward:
            notes.append("backward: cuDNN's deterministic algorithm" if desc.deterministic else
                         "backward: cuDNN's default algorithm, not promised deterministic run to run")
        if desc.dropout_p > 0:
            notes.append(DROPOUT_NOTE)
        return KernelSku(backend=self.name, kernel=self.kernel_name(desc, device), arch=device.arch_name,
                         dtype=desc.dtype, precision=precision,
                         config={"plan": built.plan_name, "served_by": built.served_by},
                         workspace_bytes=built.workspace_size,
                         versions={"attnplan": attnplan.__version__, **library.versions()},
                         notes="; ".join(notes))
