"""Building blocks shared by the attention modules and the model: RMSNorm, RoPE, SwiGLU and the causal
attention of the prefill path."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """RMS norm over the last dim. `groups` > 1 gives each leading slice its own scale, for inputs shaped
    [..., groups, dim] (GLA normalises each latent head separately)."""

    def __init__(self, dim: int, eps: float = 1e-5, groups: int = 1):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim) if groups == 1 else torch.ones(groups, dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class PerHeadProjection(nn.Module):
    """One d_c -> d_h map per query head, weight [H, d_h, d_c] (MLA/GLA's W_UK and W_UV). A module of its own so
    that a tensor-parallel plan can give each rank its heads' slice (glacompiler.parallel)."""

    def __init__(self, n_heads: int, head_dim: int, latent_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_heads, head_dim, latent_dim))
        bound = 1.0 / math.sqrt(latent_dim)  # nn.Linear's default init for a d_c -> d_h map
        nn.init.uniform_(self.weight, -bound, bound)


class SwiGLU(nn.Module):
    """The Llama MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.gate = nn.Linear(d_model, ffn_dim, bias=False)
        self.up = nn.Linear(d_model, ffn_dim, bias=False)
        self.down = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def apply_rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary embedding (half-split pairs) of the last dim of x [B, L, ..., d] at integer positions [B, L].

    Angles are computed in float32 from the positions each call: no table to size, nothing that a dtype cast
    of the module could round, and the same values in prefill and decode."""
    dim = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [B, L, d/2]
    angles = angles.reshape(*angles.shape[:2], *([1] * (x.dim() - 3)), dim // 2)
    cos, sin = angles.cos(), angles.sin()
    first, second = x.float().chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).to(x.dtype)


def prefill_positions(batch: int, length: int, device: torch.device) -> Tensor:
    """Positions [B, L] of a prompt that starts at 0."""
    return torch.arange(length, device=device).expand(batch, length)


def decode_positions(cache_seqlens: Tensor, query_len: int) -> Tensor:
    """Positions [B, Lq] of the Lq new tokens when cache_seqlens [B] counts them (the op's convention)."""
    offsets = torch.arange(query_len, device=cache_seqlens.device) - query_len
    return cache_seqlens.to(torch.long)[:, None] + offsets


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention over a whole prompt, [B, L, H, D] layout; k/v may have fewer heads (grouped)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale,
        enable_gqa=k.shape[2] != q.shape[2],
    )
    return out.transpose(1, 2)
