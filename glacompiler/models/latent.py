"""Latent attention: MLA (DeepSeek-V2/V3, one latent head) and GLA (arXiv 2505.21487, Sec. 3.3.2: h_c latent
heads, query heads split contiguously into h_c groups, group j reading latent head j).

Per token the layer caches the RMS-normed latent [h_c, d_c] and one RoPE'd key [d_R] shared by every head.
Head h (in group j) would see k_h = W_UK[h] c_j and v_h = W_UV[h] c_j. Prefill builds those keys and values;
decode never does: it folds W_UK into the query (q_lat = q_nope W_UK[h], width d_c), attends over the latent
itself as both K and V, and applies W_UV to the attended latent afterwards."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..op import attention_with_kvcache
from .base import CachedAttention
from .cache import StaticKVCache
from .config import LATENT_KINDS, AttentionConfig
from .layers import PerHeadProjection, RMSNorm, apply_rope, causal_attention, decode_positions, prefill_positions


class LatentAttention(CachedAttention):
    """MLA when config.n_latent_heads == 1, GLA otherwise."""

    def __init__(self, config: AttentionConfig):
        if config.kind not in LATENT_KINDS:
            raise ValueError(f"LatentAttention serves {LATENT_KINDS}, not {config.kind!r}")
        super().__init__(config)
        c = config
        query_width = c.n_heads * (c.head_dim + c.rope_dim)
        if c.q_latent_dim:
            self.q_down = nn.Linear(c.d_model, c.q_latent_dim, bias=False)
            self.q_norm = RMSNorm(c.q_latent_dim, c.norm_eps)
            self.q_up = nn.Linear(c.q_latent_dim, query_width, bias=False)
        else:
            self.q_proj = nn.Linear(c.d_model, query_width, bias=False)
        # The latent heads and the shared rope key come from two projections, so that tensor parallelism can
        # split the latent heads (GLA) or replicate them (MLA) while every rank computes the one rope key.
        self.latent_down = nn.Linear(c.d_model, c.n_latent_heads * c.latent_dim, bias=False)
        self.k_rope_down = nn.Linear(c.d_model, c.rope_dim, bias=False)
        self.latent_norm = RMSNorm(c.latent_dim, c.norm_eps, groups=c.n_latent_heads)
        # Per query head up-projections from its group's latent: W_UK (keys) and W_UV (values), [H, d_h, d_c].
        self.key_up = PerHeadProjection(c.n_heads, c.head_dim, c.latent_dim)
        self.value_up = PerHeadProjection(c.n_heads, c.head_dim, c.latent_dim)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)

    def _query(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """q_nope [B, L, H, d_h] and rotated q_rope [B, L, H, d_R]."""
        c = self.config
        batch, length, _ = x.shape
        q = self.q_up(self.q_norm(self.q_down(x))) if c.q_latent_dim else self.q_proj(x)
        q_nope, q_rope = q.view(batch, length, c.n_heads, c.head_dim + c.rope_dim).split([c.head_dim, c.rope_dim], -1)
        return q_nope, apply_rope(q_rope, positions, c.rope_theta)

    def _latent(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """What is cached: normed latent [B, L, h_c, d_c] and rotated shared key k_rope [B, L, d_R]."""
        c = self.config
        batch, length, _ = x.shape
        latent = self.latent_norm(self.latent_down(x).view(batch, length, c.n_latent_heads, c.latent_dim))
        return latent, apply_rope(self.k_rope_down(x), positions, c.rope_theta)

    def _up_project(self, latent: Tensor, projection: PerHeadProjection) -> Tensor:
        """Per query head h of group j: weight[h] @ latent_j. latent [B, L, h_c, d_c] -> [B, L, H, d_h]."""
        c = self.config
        grouped = projection.weight.view(c.n_latent_heads, c.n_heads // c.n_latent_heads, c.head_dim, c.latent_dim)
        out = torch.einsum("bljc,jgdc->bljgd", latent, grouped)
        return out.reshape(*latent.shape[:2], c.n_heads, c.head_dim)

    def prefill(self, x: Tensor, cache: Optional[StaticKVCache] = None) -> Tensor:
        c = self.config
        batch, length, _ = x.shape
        positions = prefill_positions(batch, length, x.device)
        q_nope, q_rope = self._query(x, positions)
        latent, k_rope = self._latent(x, positions)
        if cache is not None:
            cache.write(positions, latent, rope_keys=k_rope)
        k_nope = self._up_project(latent, self.key_up)
        v = self._up_project(latent, self.value_up)
        shared_rope_key = k_rope[:, :, None, :].expand(batch, length, c.n_heads, c.rope_dim)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, shared_rope_key), dim=-1)
        out = causal_attention(q, k, v, c.softmax_scale)
        return self.o_proj(out.reshape(batch, length, -1))

    def decode(self, x: Tensor, cache: StaticKVCache, cache_seqlens: Tensor) -> Tensor:
        c = self.config
        q_latent, q_rope = self.absorbed_query(x, cache, cache_seqlens)
        # Latent head j is KV head j of the op; query head h reads KV head h // (H / h_c): the contiguous groups.
        out_latent = attention_with_kvcache(q_latent, cache.k_cache, q_rope=q_rope, k_rope_cache=cache.k_rope_cache,
                                            cache_seqlens=cache_seqlens, softmax_scale=c.softmax_scale, causal=True)
        return self.output_from_latent(out_latent)

    def absorbed_query(self, x: Tensor, cache: StaticKVCache, cache_seqlens: Tensor) -> tuple[Tensor, Tensor]:
        """Project the new tokens, write their latent and rope key into the cache, and return the query in
        the latent space (W_UK absorbed) [B, Lq, H, d_c] with its rope part [B, Lq, H, d_R]."""
        positions = decode_positions(cache_seqlens, x.shape[1])
        q_nope, q_rope = self._query(x, positions)
        latent, k_rope = self._latent(x, positions)
        cache.write(positions, latent, rope_keys=k_rope)
        return torch.einsum("blhd,hdc->blhc", q_nope, self.key_up.weight), q_rope

    def output_from_latent(self, out_latent: Tensor) -> Tensor:
        """Attention output in the latent space [B, Lq, H, d_c] -> model width: W_UV applied after attention."""
        batch, query_len = out_latent.shape[:2]
        out = torch.einsum("blhc,hdc->blhd", out_latent, self.value_up.weight)
        return self.o_proj(out.reshape(batch, query_len, -1))
