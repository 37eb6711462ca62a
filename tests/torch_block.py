"""A tiny transformer block (pre-norm attention with GQA and an MLP) and its training loop, shared
by the CPU test (float64, against PyTorch's math SDPA) and the GPU test (bf16, against PyTorch's
fused SDPA): the same loss curve either way is the end-to-end check of forward and gradients."""

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, sdpa, dim=32, heads=4, heads_kv=2):
        super().__init__()
        self.sdpa, self.heads, self.heads_kv = sdpa, heads, heads_kv
        self.head_dim = dim // heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.q = torch.nn.Linear(dim, dim)
        self.kv = torch.nn.Linear(dim, 2 * heads_kv * self.head_dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        batch, seqlen, dim = x.shape
        h = self.norm1(x)
        q = self.q(h).view(batch, seqlen, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(batch, seqlen, 2, self.heads_kv, self.head_dim).permute(2, 0, 3, 1, 4)
        y = self.sdpa(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, seqlen, dim))
        return x + self.mlp(self.norm2(x))


def train(sdpa, steps=5, dtype=torch.float64, device="cpu", batch=4, seqlen=12, dim=32, heads=4, heads_kv=2,
          lr=1e-2) -> list[float]:
    """The losses of `steps` AdamW steps regressing a fixed random target, from a fixed start."""
    torch.manual_seed(0)
    model = Block(sdpa, dim, heads, heads_kv).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, seqlen, dim, dtype=torch.float32, generator=generator).to(device=device, dtype=dtype)
    target = torch.randn(batch, seqlen, dim, dtype=torch.float32, generator=generator).to(device=device, dtype=dtype)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x).float(), target.float())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
