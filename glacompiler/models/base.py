"""What every reference attention module shares: its config, its cache and the no-cache forward."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .cache import StaticKVCache
from .config import AttentionConfig


class CachedAttention(nn.Module):
    """Subclasses implement
    prefill(x [B, L, d_model], cache=None) -> [B, L, d_model]: causal attention over a prompt that starts at
        position 0, in the ordinary (non-absorbed) form; stores the prompt in `cache` when one is given.
    decode(x [B, Lq, d_model], cache, cache_seqlens [B] int32) -> [B, Lq, d_model]: stores the Lq new tokens at
        positions cache_seqlens - Lq .. cache_seqlens - 1 and attends over the cache with the fused op."""

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config

    def new_cache(self, batch_size: int, max_seq_len: int, *, dtype: Optional[torch.dtype] = None,
                  device: Optional[torch.device] = None) -> StaticKVCache:
        """An empty cache for this layer; dtype and device default to the module's parameters'."""
        reference = next(self.parameters())
        return StaticKVCache(batch_size, max_seq_len, self.config.cache_spec(),
                             dtype=dtype or reference.dtype, device=device or reference.device)

    def forward(self, x: Tensor) -> Tensor:
        return self.prefill(x)
