"""TinyLM: a small decoder-only model over any attention kind, with a static cache for every layer."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .base import CachedAttention
from .cache import StaticKVCache
from .config import GROUPED_QUERY_KINDS, AttentionConfig, ModelConfig
from .gqa import GroupedQueryAttention
from .gta import GroupedTiedAttention
from .latent import LatentAttention
from .layers import RMSNorm, SwiGLU


def build_attention(config: AttentionConfig) -> CachedAttention:
    if config.kind in GROUPED_QUERY_KINDS:
        return GroupedQueryAttention(config)
    if config.kind == "gta":
        return GroupedTiedAttention(config)
    return LatentAttention(config)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = build_attention(config.attention)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.ffn_dim)

    def prefill(self, x: Tensor, cache: Optional[StaticKVCache]) -> Tensor:
        x = x + self.attention.prefill(self.attention_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))

    def decode(self, x: Tensor, cache: StaticKVCache, cache_seqlens: Tensor) -> Tensor:
        x = x + self.attention.decode(self.attention_norm(x), cache, cache_seqlens)
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """Usage: setup_cache(batch, capacity); logits = prefill(prompt); then repeatedly
    logits = decode(new_tokens, cache_seqlens) with cache_seqlens [B] int32 counting every token cached so far,
    the new ones included (as the fused op counts them). Sequences may have different lengths: a prompt batch
    padded on the right is prefilled whole, and each sequence then decodes from its own length, overwriting its
    padding. prefill() and decode() are inference only (no autograd; the fused op has no backward).
    decode() has no host sync and no Python branch on values: torch.compile(fullgraph=True) traces it
    once for all lengths."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.caches: Optional[nn.ModuleList] = None

    def setup_cache(self, batch_size: int, max_seq_len: int, *, dtype: Optional[torch.dtype] = None,
                    device: Optional[torch.device] = None) -> None:
        """Allocate one StaticKVCache per layer (dtype/device default to the model's)."""
        self.caches = nn.ModuleList(
            layer.attention.new_cache(batch_size, max_seq_len, dtype=dtype, device=device) for layer in self.layers
        )

    def cache_bytes_per_token(self) -> int:
        """Bytes one token occupies in the caches of all layers."""
        return sum(cache.bytes_per_token() for cache in self._require_caches())

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits [B, L, V] of a causal pass over tokens [B, L], without any cache."""
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer.prefill(x, None)
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def prefill(self, tokens: Tensor, *, last_token_only: bool = False) -> Tensor:
        """Causal pass over prompts tokens [B, L] (positions 0..L-1), storing them in the caches. Returns logits
        [B, L, V], or [B, 1, V] for the last position when last_token_only (long prompts, large vocabularies)."""
        x = self.embed(tokens)
        for layer, cache in zip(self.layers, self._require_caches()):
            x = layer.prefill(x, cache)
        if last_token_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def decode(self, tokens: Tensor, cache_seqlens: Tensor) -> Tensor:
        """Logits [B, Lq, V] for Lq new tokens [B, Lq] (1 <= Lq <= 16: speculative drafts), which land at
        positions cache_seqlens - Lq .. cache_seqlens - 1 of each sequence."""
        x = self.embed(tokens)
        for layer, cache in zip(self.layers, self._require_caches()):
            x = layer.decode(x, cache, cache_seqlens)
        return self.lm_head(self.norm(x))

    def _require_caches(self) -> nn.ModuleList:
        if self.caches is None:
            raise RuntimeError("call setup_cache(batch_size, max_seq_len) first")
        return self.caches
