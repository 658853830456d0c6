"""Which keys each row of a decode call may see, in the form every family's kernel takes: the lengths, the
mask as a kernel operand with its strides, and the mask's key range. No host-device sync."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from .mask_range import mask_key_range


def mask_as_kernel_operand(attn_mask: Tensor) -> Tensor:
    """The mask as 4-D [B or 1, Hq or 1, Lq or 1, S], bool viewed as uint8 (what the kernels load)."""
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask.view(torch.uint8) if attn_mask.dtype == torch.bool else attn_mask


@dataclasses.dataclass
class KeyBounds:
    """What the kernels take about which keys a row sees. Without a mask, the lengths stand in for mask and
    range (HAS_MASK is off, so the kernels never read them) and the strides are 0."""

    lengths: Tensor  # [B] int32
    mask: Tensor  # the mask as a kernel operand (mask_as_kernel_operand)
    kv_begin: Tensor  # [B] first key the mask allows
    kv_end: Tensor  # [B] one past its last
    mask_strides: tuple  # (batch, head, token, key)
    mask_per_row: bool  # the mask differs between packed (head, token) rows


def resolve_key_bounds(attn_mask: Optional[Tensor], kv_range: Optional[Tensor], cache_seqlens: Optional[Tensor],
                       batch: int, num_q_heads: int, query_len: int, capacity: int, causal: bool,
                       device, positions_matter: bool = False) -> KeyBounds:
    """The key bounds of a call, as the kernels take them. With a mask: the mask as a kernel operand, its
    strides, and its key range (kv_range when the caller has it, one per graph under backend="gla"; else
    reduced here), and, when no lengths are given, the range's end as the lengths (no key past it is visited
    anyway; causal Lq > 1, ALiBi and a window, which place the queries by the lengths, align to the capacity
    instead: positions_matter). Without a mask, the lengths (the capacity when none are given)."""
    if attn_mask is not None:
        mask = mask_as_kernel_operand(attn_mask)
        if kv_range is None:
            kv_range = mask_key_range(mask, batch, capacity, attn_mask.dtype == torch.bool)
        if cache_seqlens is None and not (causal and query_len > 1) and not positions_matter:
            cache_seqlens = kv_range[1]
    if cache_seqlens is None:
        cache_seqlens = torch.full((batch,), capacity, dtype=torch.int32, device=device)
    if attn_mask is None:
        return KeyBounds(cache_seqlens, cache_seqlens, cache_seqlens, cache_seqlens, (0, 0, 0, 0), False)
    strides = mask.expand(batch, num_q_heads, query_len, capacity).stride()  # broadcast dims get stride 0
    per_row = (num_q_heads > 1 and strides[1] != 0) or (query_len > 1 and strides[2] != 0)
    return KeyBounds(cache_seqlens, mask, kv_range[0], kv_range[1], strides, per_row)
