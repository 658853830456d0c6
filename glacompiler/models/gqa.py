"""Grouped-query attention (MHA and MQA are its n_kv_heads = n_heads and 1 cases): separate K and V per KV
head, RoPE on the whole head."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..op import attention_with_kvcache
from .base import CachedAttention
from .cache import StaticKVCache
from .config import GROUPED_QUERY_KINDS, AttentionConfig
from .layers import apply_rope, causal_attention, decode_positions, prefill_positions


class GroupedQueryAttention(CachedAttention):
    """Caches k and v: [B, S, n_kv_heads, head_dim] each."""

    def __init__(self, config: AttentionConfig):
        if config.kind not in GROUPED_QUERY_KINDS:
            raise ValueError(f"GroupedQueryAttention serves {GROUPED_QUERY_KINDS}, not {config.kind!r}")
        super().__init__(config)
        c = config
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)

    def _project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.config
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, c.n_heads, c.head_dim)
        k = self.k_proj(x).view(batch, length, c.n_kv_heads, c.head_dim)
        v = self.v_proj(x).view(batch, length, c.n_kv_heads, c.head_dim)
        return apply_rope(q, positions, c.rope_theta), apply_rope(k, positions, c.rope_theta), v

    def prefill(self, x: Tensor, cache: Optional[StaticKVCache] = None) -> Tensor:
        batch, length, _ = x.shape
        positions = prefill_positions(batch, length, x.device)
        q, k, v = self._project(x, positions)
        if cache is not None:
            cache.write(positions, k, v)
        out = causal_attention(q, k, v, self.config.softmax_scale)
        return self.o_proj(out.reshape(batch, length, -1))

    def decode(self, x: Tensor, cache: StaticKVCache, cache_seqlens: Tensor) -> Tensor:
        batch, query_len, _ = x.shape
        positions = decode_positions(cache_seqlens, query_len)
        q, k, v = self._project(x, positions)
        cache.write(positions, k, v)
        out = attention_with_kvcache(q, cache.k_cache, cache.v_cache, cache_seqlens=cache_seqlens,
                                     softmax_scale=self.config.softmax_scale, causal=True)
        return self.o_proj(out.reshape(batch, query_len, -1))
