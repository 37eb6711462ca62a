"""attnplan: one plan-based API over fast attention implementations on NVIDIA GPUs.

    desc = AttentionDescriptor(...)          # immutable, validated
    plan = Plan.select(desc)                 # every rejected backend says why (explain)
    plan.can_implement(q=..., k=..., v=...)  # argument checks, naming the culprit
    out, lse = plan.run(q=..., k=..., v=...)
"""

__version__ = "0.1.0"

from .api import attention, attention_backward, describe
from .descriptor import AttentionDescriptor, PagedKV
from .device import Device
from .errors import (AttnPlanError, InvalidArguments, InvalidDescriptor, InvalidPolicy, KernelCompileError,
                     NoPlanError, SkuMismatch)
from .plan import AttentionResult, Plan, Verdict, explain
from .sku import KernelSku, PrecisionGuarantee

__all__ = [
    "AttentionDescriptor", "PagedKV", "Device", "Plan", "AttentionResult", "Verdict", "explain",
    "KernelSku", "PrecisionGuarantee", "attention", "attention_backward", "describe",
    "AttnPlanError", "InvalidArguments", "InvalidDescriptor", "InvalidPolicy", "KernelCompileError", "NoPlanError",
    "SkuMismatch",
]
