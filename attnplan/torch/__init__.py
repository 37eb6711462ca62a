"""attnplan from PyTorch (docs/pytorch.md): differentiable, compilable custom ops and an SDPA drop-in.

    import attnplan.torch as apt
    out = apt.attention(q, k, v, causal=True)                       # attnplan.attention's keywords
    out = apt.scaled_dot_product_attention(q, k, v, is_causal=True)  # torch's SDPA, served by the planner

The ops are `torch.ops.attnplan.attention` and `torch.ops.attnplan.attention_backward` (registered
with torch.library.custom_op, with fake and autograd registrations).  Importing this module needs
PyTorch; `import attnplan` does not.
"""

try:
    import torch  # noqa: F401
except ModuleNotFoundError as exc:       # pragma: no cover - depends on the environment
    raise ModuleNotFoundError("attnplan.torch needs PyTorch (pip install torch)", name=exc.name) from exc

from .functional import attention, attention_backward, dropout_seed_tensor
from .ops import attention_backward_op, attention_op
from .sdpa import scaled_dot_product_attention

__all__ = ["attention", "attention_backward", "scaled_dot_product_attention", "attention_op",
           "attention_backward_op", "dropout_seed_tensor"]
