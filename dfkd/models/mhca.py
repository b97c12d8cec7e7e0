"""Multi-head convolutional attention (MHCA): self-attention plus a learnable relative-position term per head."""

import math
from itertools import product
from typing import Optional, Tuple

import torch
from timm.layers import resolve_self_attn_mask, to_2tuple, use_fused_attn
from torch import nn
from torch.nn import functional as F

__all__ = ["MHCAttention", "relative_encodings", "attention_probs", "attention_distance"]


def relative_encodings(
    grid_size: Tuple[int, int], num_prefix_tokens: int = 0, device: Optional[torch.device] = None
) -> torch.Tensor:
    """(3, N, N) encodings r_ij = (|d|^2, d_x, d_y), d = p_j - p_i in patch units; zero for prefix tokens."""
    h, w = grid_size
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    dx = xs.flatten()[None, :] - xs.flatten()[:, None]
    dy = ys.flatten()[None, :] - ys.flatten()[:, None]
    rel = torch.stack((dx**2 + dy**2, dx, dy))
    return F.pad(rel, (num_prefix_tokens, 0, num_prefix_tokens, 0))


class MHCAttention(nn.Module):
    """timm-style multi-head attention whose logits add v^(h) . r_ij (Cordonnier et al., 2020)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        grid_size: Tuple[int, int] = (14, 14),
        num_prefix_tokens: int = 2,
        locality_strength: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim should be divisible by num_heads"
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn()
        self.num_prefix_tokens = num_prefix_tokens
        self.locality_strength = locality_strength

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.v = nn.Parameter(torch.zeros(num_heads, 3, **dd))
        self.set_grid_size(grid_size)
        self.init_locality(locality_strength)

    def set_grid_size(self, grid_size: Tuple[int, int]) -> None:
        """Rebuild the (non-persistent) relative encodings for a patch grid (h, w)."""
        self.grid_size = to_2tuple(grid_size)
        rel = relative_encodings(self.grid_size, self.num_prefix_tokens, device=self.v.device)
        self.register_buffer("rel", rel, persistent=False)

    @torch.no_grad()
    def init_locality(self, alpha: float = 1.0, kernel_size: Optional[int] = None) -> None:
        """Local init: head h peaks at offset D^(h) of a k x k grid, v^(h) = -alpha (1, -2 D_x, -2 D_y)."""
        k = kernel_size or math.ceil(math.sqrt(self.num_heads))
        r = [i - (k - 1) // 2 for i in range(k)]  # centred; for even k the extra offset is on the + side
        offsets = sorted(product(r, r), key=lambda d: (d[0] ** 2 + d[1] ** 2, d[1], d[0]))  # nearest first
        for h in range(self.num_heads):
            dx, dy = offsets[h % len(offsets)]
            self.v[h] = torch.tensor([-alpha, 2 * alpha * dx, 2 * alpha * dy])

    def init_weights(self) -> None:
        """Re-apply the local init (called by timm's ViT weight init)."""
        self.init_locality(self.locality_strength)

    def position_bias(self) -> torch.Tensor:
        """(num_heads, N, N) position term v^(h) . r_ij."""
        return torch.einsum("hc,cij->hij", self.v, self.rel.to(self.v.dtype))

    def attention_bias(
        self, q: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        """(1 or B, H, N, N) additive float bias: position term plus an optional external mask, in q's dtype."""
        bias = self.position_bias().unsqueeze(0).to(q.dtype)
        mask = resolve_self_attn_mask(q.shape[-2], q, attn_mask, is_causal)
        return bias if mask is None else bias + mask

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Attention over (B, N, C) tokens whose first num_prefix_tokens carry no position."""
        B, N, C = x.shape
        q, k, val = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.attention_bias(q, attn_mask, is_causal)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, val, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ val
        x = self.proj(x.transpose(1, 2).reshape(B, N, C))
        return self.proj_drop(x)


@torch.no_grad()
def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) attention weights of a timm Attention or MHCAttention on its input x (B, N, C)."""
    B, N, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if isinstance(attn, MHCAttention):
        logits = logits + attn.position_bias()
    return logits.softmax(dim=-1)


def attention_distance(probs: torch.Tensor, grid_size: Tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Per-head mean over batch and patch queries of sum_j A_ij |d_ij| (prefix keys count as distance 0)."""
    dist = relative_encodings(grid_size, num_prefix_tokens, device=probs.device)[0].sqrt()
    per_query = (probs * dist).sum(-1)[..., num_prefix_tokens:]
    return per_query.mean(dim=(0, 2))
