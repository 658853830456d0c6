"""Plain-PyTorch decode attention with exactly the op's semantics: the oracle for everything else.

The op's CPU implementation (op/cpu_attention.py) runs PyTorch's fused CPU attention instead, and this for calls with
a soft cap, which that kernel cannot express."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .spec import default_softmax_scale


def logical_cache(cache: Tensor, page_table: Optional[Tensor], cache_seqlens: Tensor) -> Tensor:
    """A cache as [B, S, ...] in logical token order; paged caches are gathered through the page table.

    Page-table entries past each sequence's length may hold anything (even out-of-range ids), so they are
    replaced by page 0 before gathering; the positions they cover are masked out by the caller."""
    if page_table is None:
        return cache
    page_size = cache.shape[1]
    num_slots = page_table.shape[1]
    used = torch.arange(num_slots, device=cache.device) * page_size < cache_seqlens[:, None].to(torch.long)
    pages = torch.where(used, page_table.to(torch.long), torch.zeros_like(page_table, dtype=torch.long))
    gathered = cache[pages]  # [B, num_slots, page_size, ...]
    return gathered.reshape(gathered.shape[0], num_slots * page_size, *cache.shape[2:])


def mask_attended_keys(attn_mask: Tensor, batch: int, capacity: int) -> Tensor:
    """[B, S] bool: the keys some (head, token) row of a bool (True = attend) or additive mask lets a query see."""
    attend = attn_mask if attn_mask.dtype == torch.bool else attn_mask != float("-inf")
    while attend.dim() < 4:
        attend = attend.unsqueeze(0)
    return attend.expand(batch, -1, -1, capacity).any(dim=2).any(dim=1)


def mask_end(attn_mask: Optional[Tensor], batch: int, capacity: int) -> Optional[Tensor]:
    """[B] int32, one past the last key any row of the mask lets a query see (None without a mask)."""
    if attn_mask is None:
        return None
    if capacity == 0:
        return torch.zeros(batch, dtype=torch.int32, device=attn_mask.device)
    positions = torch.arange(1, capacity + 1, dtype=torch.int32, device=attn_mask.device)
    return torch.where(mask_attended_keys(attn_mask, batch, capacity), positions, 0).amax(dim=-1)


def lengths_and_gathered(cache_seqlens: Optional[Tensor], attn_mask: Optional[Tensor], batch: int, capacity: int,
                         device: torch.device) -> tuple[Tensor, Tensor]:
    """(lengths [B], gathered [B]): the lengths (the capacity where none are given), and how far page-table slots are
    read: up to the lengths or, with only a mask, up to the last key the mask allows (slots past it may hold
    anything)."""
    gathered = cache_seqlens if cache_seqlens is not None else mask_end(attn_mask, batch, capacity)
    if cache_seqlens is None:
        cache_seqlens = torch.full((batch,), capacity, dtype=torch.int32, device=device)
    return cache_seqlens, (cache_seqlens if gathered is None else gathered)


def visible_keys(seqlens: Tensor, positions: Tensor, query_len: int, causal: bool,
                 window_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(allowed [B, Lq or 1, S] bool, distance [B, Lq, S]): the key positions each query token may see by the
    lengths, causality and the window (query i of sequence b sits at seqlens[b] - Lq + i), and the query's position
    minus the key's. seqlens: [B] int64."""
    query_pos = seqlens[:, None] - query_len + torch.arange(query_len, device=seqlens.device)  # [B, Lq]
    distance = query_pos[:, :, None] - positions
    allowed = (positions < seqlens[:, None])[:, None, :]
    if causal and query_len > 1:  # (one query sits at its sequence's end: it sees every key below its length)
        allowed = allowed & (distance >= 0)
    window_left, window_right = window_size
    if window_left >= 0:
        allowed = allowed & (distance <= window_left)
    if window_right >= 0:
        allowed = allowed & (-distance <= window_right)
    return allowed, distance


def attention_with_kvcache_reference(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Optional[Tensor] = None,
    *,
    q_rope: Optional[Tensor] = None,
    k_rope_cache: Optional[Tensor] = None,
    cache_seqlens: Optional[Tensor] = None,
    page_table: Optional[Tensor] = None,
    attn_mask: Optional[Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = True,
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    sinks: Optional[Tensor] = None,
    window_size: tuple[int, int] = (-1, -1),
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: Optional[torch.dtype] = None,
) -> tuple[Tensor, Tensor]:
    """Returns (out [B, Lq, Hq, Dv] in out_dtype (default q.dtype), lse [B, Lq, Hq] float32 or float64).

    FlashAttention's extensions (flash_attn_with_kvcache's meanings; query i sits at cache_seqlens[b] - Lq + i):
    softcap > 0 caps the scaled scores to softcap * tanh(scores / softcap) before any bias; alibi_slopes [Hq] or
    [B, Hq] adds -slope * |query_pos - key_pos|; sinks [Hq] joins exp(sink) to each row's softmax denominator
    (no value; lse includes it); window_size (left, right), -1 = unlimited: key j is seen when
    query_pos - left <= j <= query_pos + right."""
    batch, q_len, num_q_heads, head_dim_q = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    rope_dim = 0 if q_rope is None else q_rope.shape[-1]
    if softmax_scale is None:
        softmax_scale = default_softmax_scale(head_dim_q, rope_dim)
    capacity = k_cache.shape[1] if page_table is None else page_table.shape[1] * k_cache.shape[1]
    cache_seqlens, gathered_lengths = lengths_and_gathered(cache_seqlens, attn_mask, batch, capacity, q.device)
    seqlens = cache_seqlens.to(torch.long)

    keys = logical_cache(k_cache, page_table, gathered_lengths).to(compute_dtype)
    values = keys if v_cache is None else logical_cache(v_cache, page_table, gathered_lengths).to(compute_dtype)
    positions = torch.arange(capacity, device=q.device)
    valid = positions[None, :] < seqlens[:, None]  # [B, S]
    # Slots past each length, and page-table slots not gathered (read from page 0), may hold NaN: zero them so that
    # 0 * NaN cannot leak into the output.
    gathered = positions[None, :] < gathered_lengths.to(torch.long)[:, None]
    values = torch.where((valid & gathered)[:, :, None, None], values,
                         torch.zeros((), dtype=compute_dtype, device=q.device))
    # Query heads h = kv_head * group + g share KV head kv_head: group them instead of repeating the cache.
    q_grouped = q.to(compute_dtype).reshape(batch, q_len, num_kv_heads, group, head_dim_q)
    scores = torch.einsum("bqkgd,bskd->bkgqs", q_grouped, keys[..., :head_dim_q])
    if q_rope is not None:
        rope_keys = logical_cache(k_rope_cache, page_table, gathered_lengths).to(compute_dtype)
        scores = scores + torch.einsum("bqhr,bsr->bhqs", q_rope.to(compute_dtype), rope_keys).reshape(scores.shape)
    scores = scores.reshape(batch, num_q_heads, q_len, capacity)
    scores = scores * softmax_scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)

    allowed, distance = visible_keys(seqlens, positions, q_len, causal, window_size)
    allowed, distance = allowed[:, None], distance[:, None]  # [B, 1, Lq or 1, S], [B, 1, Lq, S]
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(compute_dtype).expand(batch, num_q_heads)[:, :, None, None]
        scores = scores - slopes * distance.abs().to(compute_dtype)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            scores = scores + attn_mask.to(compute_dtype)
    scores = torch.where(allowed, scores, torch.full((), -math.inf, dtype=compute_dtype, device=q.device))

    columns = scores  # every logit of a row's softmax denominator
    if sinks is not None:
        # A sink is one more logit per head in every row's denominator, with no value: an extra key column.
        sink_column = sinks.to(compute_dtype)[None, :, None, None].expand(batch, num_q_heads, q_len, 1)
        columns = torch.cat([scores, sink_column], dim=-1)
    lse = torch.logsumexp(columns, dim=-1)  # [B, Hq, Lq]; -inf where nothing is attended
    safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - safe_lse[..., None])
    # A row whose every score sits at a fill near -3.4e38 (torch.finfo(float32).min: a row of masked fills only)
    # loses log(n) from its LSE to rounding, even in float64, and exp(score - lse) would sum to n: such rows are
    # normalised from their max instead (the others keep the rounding of PyTorch's softmax, the rule's baseline).
    row_max = columns.amax(dim=-1) if columns.shape[-1] else lse  # (an empty cache: no key, lse -inf)
    swamped = (row_max < -1e30) & ~torch.isinf(row_max)
    if swamped.any():
        shift = torch.where(swamped, row_max, torch.zeros_like(row_max))[..., None]
        total = torch.exp(columns - shift).sum(dim=-1)
        probs = torch.where(swamped[..., None], torch.exp(scores - shift) / total[..., None], probs)
        lse = torch.where(swamped, row_max + torch.log(total), lse)
    probs = probs.reshape(batch, num_kv_heads, group, q_len, capacity)
    out = torch.einsum("bkgqs,bskd->bqkgd", probs, values).reshape(batch, q_len, num_q_heads, values.shape[-1])
    lse_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
    return out.to(out_dtype or q.dtype), lse.transpose(1, 2).to(lse_dtype).contiguous()
