"""Grouped-tied attention (arXiv 2505.21487, Sec. 3.3.1): one tied KV state per KV head serves as V whole and,
for its first head_dim - d_R channels, as the un-rotated part of K; the rotated part of K is one rope key
shared by every head. The query splits the same way."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..op import attention_with_kvcache
from .base import CachedAttention
from .cache import StaticKVCache
from .config import AttentionConfig
from .layers import apply_rope, causal_attention, decode_positions, prefill_positions


class GroupedTiedAttention(CachedAttention):
    """Caches the tied state [B, S, n_kv_heads, head_dim] and the rope key [B, S, d_R]: about half of GQA's."""

    def __init__(self, config: AttentionConfig):
        if config.kind != "gta":
            raise ValueError(f"GroupedTiedAttention serves 'gta', not {config.kind!r}")
        super().__init__(config)
        c = config
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.kv_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.k_rope_proj = nn.Linear(c.d_model, c.rope_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)

    def _project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns q_nope [B, L, H, head_dim - d_R], q_rope [B, L, H, d_R], tied kv [B, L, Hkv, head_dim] and
        k_rope [B, L, d_R] (both rope parts rotated)."""
        c = self.config
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, c.n_heads, c.head_dim)
        q_nope, q_rope = q.split([c.head_dim - c.rope_dim, c.rope_dim], dim=-1)
        kv = self.kv_proj(x).view(batch, length, c.n_kv_heads, c.head_dim)
        k_rope = apply_rope(self.k_rope_proj(x), positions, c.rope_theta)
        return q_nope, apply_rope(q_rope, positions, c.rope_theta), kv, k_rope

    def prefill(self, x: Tensor, cache: Optional[StaticKVCache] = None) -> Tensor:
        c = self.config
        batch, length, _ = x.shape
        positions = prefill_positions(batch, length, x.device)
        q_nope, q_rope, kv, k_rope = self._project(x, positions)
        if cache is not None:
            cache.write(positions, kv, rope_keys=k_rope)
        shared_rope_key = k_rope[:, :, None, :].expand(batch, length, c.n_kv_heads, c.rope_dim)
        k = torch.cat((kv[..., : c.head_dim - c.rope_dim], shared_rope_key), dim=-1)
        out = causal_attention(torch.cat((q_nope, q_rope), dim=-1), k, kv, c.softmax_scale)
        return self.o_proj(out.reshape(batch, length, -1))

    def decode(self, x: Tensor, cache: StaticKVCache, cache_seqlens: Tensor) -> Tensor:
        batch, query_len, _ = x.shape
        positions = decode_positions(cache_seqlens, query_len)
        q_nope, q_rope, kv, k_rope = self._project(x, positions)
        cache.write(positions, kv, rope_keys=k_rope)
        # v_cache=None: V is the whole tied state; q (width head_dim - d_R) is dotted with its first channels.
        out = attention_with_kvcache(q_nope, cache.k_cache, q_rope=q_rope, k_rope_cache=cache.k_rope_cache,
                                     cache_seqlens=cache_seqlens, softmax_scale=self.config.softmax_scale,
                                     causal=True)
        return self.o_proj(out.reshape(batch, query_len, -1))
