"""The op's CPU implementation: PyTorch's fused CPU attention kernel (the one F.scaled_dot_product_attention runs on
CPU, called through its ATen op for the log-sum-exp too) over the logical cache.

glacompiler.reference computes the same thing op by op in float32 with every score materialised: the oracle, and
the CPU path before this one (benchmarks/bench_cpu_attention.py: 35x slower at 4 sequences of 4000 keys of GQA
32/8/128 in bf16, 1.3x at a tiny decode whose ops' overheads dominate). Here:
- the query heads of a KV head are folded into the query rows ([B, Hkv, G * Lq, D] against [B, Hkv, S, D]), so no
  cache is repeated per query head (an MLA cache would be 128 times over);
- lengths, causality, the sliding window, ALiBi and the caller's mask become one additive mask over those rows;
- a sink joins the denominator after the kernel: lse' = logaddexp(lse, sink), out' = out * exp(lse - lse');
- queries and keys get the rope parts appended; where the value width differs from the key width the narrower side
  is padded with zeros (scores and outputs unchanged), except that a latent value, the keys' own prefix, is read
  from the keys and the output cut back.
float32 is computed in float64 (the conversion costs about 4x SDPA's float32 time at that size: correctness first).
A soft cap bends the scores before the mask, which the kernel cannot express: those calls take the reference, as do
calls whose NaN the kernel cannot place (see the end of cpu_attention)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference import attention_with_kvcache_reference, lengths_and_gathered, logical_cache, visible_keys

_FUSED_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


def cpu_attention(q: Tensor, k_cache: Tensor, v_cache: Optional[Tensor], q_rope: Optional[Tensor],
                  k_rope_cache: Optional[Tensor], cache_seqlens: Optional[Tensor], page_table: Optional[Tensor],
                  attn_mask: Optional[Tensor], softmax_scale: float, causal: bool, softcap: float,
                  alibi_slopes: Optional[Tensor], sinks: Optional[Tensor],
                  window_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(out [B, Lq, Hq, Dv] contiguous in q's dtype, lse [B, Lq, Hq] float32) of validated CPU arguments, with the
    reference's meaning (glacompiler.reference.attention_with_kvcache_reference)."""
    # float32 is computed in float64: the kernel's float32 error is the reference's on average but over twice it on
    # some draws (FlashAttention's rule asks at most twice); bf16 and fp16 run as they are (a fifth to a third of it).
    compute_dtype = torch.float64 if q.dtype == torch.float32 else q.dtype

    def reference() -> tuple[Tensor, Tensor]:
        out, lse = attention_with_kvcache_reference(
            q, k_cache, v_cache, q_rope=q_rope, k_rope_cache=k_rope_cache, cache_seqlens=cache_seqlens,
            page_table=page_table, attn_mask=attn_mask, softmax_scale=softmax_scale, causal=causal, softcap=softcap,
            alibi_slopes=alibi_slopes, sinks=sinks, window_size=window_size,
            compute_dtype=torch.promote_types(compute_dtype, torch.float32))
        return out.contiguous(), lse.float()

    if softcap > 0:
        return reference()
    batch, query_len, num_q_heads, head_dim_q = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    head_dim_v = (k_cache if v_cache is None else v_cache).shape[-1]
    capacity = k_cache.shape[1] if page_table is None else page_table.shape[1] * k_cache.shape[1]
    if capacity == 0:  # (the kernel cannot take zero keys)
        return _seeing_nothing(q, head_dim_v, sinks)
    cache_seqlens, gathered_lengths = lengths_and_gathered(cache_seqlens, attn_mask, batch, capacity, q.device)
    # Keys at or past the longest gathered length are seen by no row: left out (on CPU reading a value is free). At
    # least one key, which every row's mask rules out where all lengths are 0.
    span = max(1, int(gathered_lengths.max()))
    positions = torch.arange(span)
    cache = _logical_prefix(k_cache, page_table, gathered_lengths, span)  # [B, span, Hkv, Dk]
    keys = cache[..., :head_dim_q].to(compute_dtype)
    queries = q.to(compute_dtype)
    if q_rope is not None:
        rope = _logical_prefix(k_rope_cache, page_table, gathered_lengths, span).to(compute_dtype)  # [B, span, R]
        keys = torch.cat([keys, rope[:, :, None, :].expand(-1, -1, num_kv_heads, -1)], dim=-1)  # (shared by all)
        queries = torch.cat([queries, q_rope.to(compute_dtype)], dim=-1)
    values_in_keys = v_cache is None and head_dim_v <= head_dim_q  # the values are the keys' first Dv columns
    values = keys if values_in_keys else (cache if v_cache is None else
                                          _logical_prefix(v_cache, page_table, gathered_lengths, span)
                                          ).to(compute_dtype)
    width = max(keys.shape[-1], values.shape[-1])
    queries = queries.reshape(batch, query_len, num_kv_heads, group, -1).permute(0, 2, 3, 1, 4)
    queries = _padded(queries.reshape(batch, num_kv_heads, group * query_len, -1), width)
    bias = _additive_mask(attn_mask, cache_seqlens, positions, batch, num_q_heads, num_kv_heads, query_len, causal,
                          alibi_slopes, window_size, torch.promote_types(compute_dtype, torch.float32))
    sees_a_key = (bias > -math.inf).any(dim=-1, keepdim=True)  # [B, 1 or Hkv, G * Lq, 1]

    def attend(keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        out, lse = _FUSED_CPU_ATTENTION(queries, _padded(keys, width).transpose(1, 2),
                                        _padded(values, width).transpose(1, 2), 0.0, False, attn_mask=bias,
                                        scale=softmax_scale)
        # A row that sees no key gets out = 0, lse = -inf (the kernel's lse there is not -inf).
        return (torch.where(sees_a_key, out, torch.zeros((), dtype=out.dtype)),
                torch.where(sees_a_key[..., 0], lse, -math.inf))

    out, lse = attend(keys, values)
    if torch.isnan(out).any():  # (a NaN lse makes its row's out NaN)
        # Slots past a length, and page-table slots not gathered (read from page 0), may hold anything: an additive
        # -inf cannot hide a NaN or infinite score there, nor a zero probability a NaN or infinite value. Such a slot
        # can only turn results into NaN, so only then are the caches copied with those slots zeroed.
        readable = ((positions < cache_seqlens[:, None]) & (positions < gathered_lengths[:, None]))[:, :, None, None]
        zero = torch.zeros((), dtype=compute_dtype)
        keys = torch.where(readable, keys, zero)
        out, lse = attend(keys, keys if values_in_keys else torch.where(readable, values, zero))
        if torch.isnan(out).any():
            # A NaN or infinite key inside a length that a row's causality, window or mask hides (or a finite one
            # whose score overflows in bf16 / fp16): the reference drops such scores, an additive -inf cannot. A NaN
            # value where a row attends stays NaN there too.
            return reference()
    if sinks is not None:
        sink = sinks.to(lse.dtype).repeat_interleave(query_len).reshape(num_kv_heads, group * query_len)
        with_sink = torch.logaddexp(lse, sink)
        kept = torch.where(torch.isneginf(with_sink), 0.0, torch.exp(lse - with_sink))  # (-inf - -inf is NaN)
        out, lse = out * kept[..., None].to(out.dtype), with_sink
    out = out[..., :head_dim_v].to(q.dtype).reshape(batch, num_kv_heads, group, query_len, head_dim_v)
    out = out.permute(0, 3, 1, 2, 4).reshape(batch, query_len, num_q_heads, head_dim_v)
    lse = lse.float().reshape(batch, num_q_heads, query_len).transpose(1, 2)
    return out.contiguous(), lse.contiguous()


def _seeing_nothing(q: Tensor, head_dim_v: int, sinks: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The outputs where no row sees a key: out 0, lse -inf or, with sinks, each head's sink."""
    batch, query_len, num_q_heads, _ = q.shape
    out = q.new_zeros((batch, query_len, num_q_heads, head_dim_v))
    if sinks is None:
        return out, torch.full((batch, query_len, num_q_heads), -math.inf)
    return out, sinks.float().expand(batch, query_len, num_q_heads).contiguous()


def _logical_prefix(cache: Tensor, page_table: Optional[Tensor], lengths: Tensor, span: int) -> Tensor:
    """The cache's first span logical slots, [B, span, ...] (paged: only the pages that hold them are gathered)."""
    if page_table is None:
        return cache[:, :span]
    page_size = cache.shape[1]
    return logical_cache(cache, page_table[:, :-(-span // page_size)], lengths)[:, :span]


def _padded(tensor: Tensor, width: int) -> Tensor:
    """tensor with its last dimension padded with zeros to width (itself where it is that wide)."""
    return tensor if tensor.shape[-1] == width else F.pad(tensor, (0, width - tensor.shape[-1]))


def _additive_mask(attn_mask: Optional[Tensor], cache_seqlens: Tensor, positions: Tensor, batch: int,
                   num_q_heads: int, num_kv_heads: int, query_len: int, causal: bool,
                   alibi_slopes: Optional[Tensor], window_size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """[B, 1 or Hkv, G * Lq, S] in dtype: 0 or a bias where a query row may see a key, -inf where it may not; row
    g * Lq + i is query token i of the group's head g."""
    group = num_q_heads // num_kv_heads
    allowed, distance = visible_keys(cache_seqlens.to(torch.long), positions, query_len, causal, window_size)
    allowed = allowed[:, None, None]  # [B, 1, 1, Lq or 1, S], dims 1-2 for KV head and group
    bias = torch.zeros((), dtype=dtype)
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(dtype).expand(batch, num_q_heads).reshape(batch, num_kv_heads, group, 1, 1)
        bias = -slopes * distance.abs()[:, None, None].to(dtype)
    if attn_mask is not None:
        mask = attn_mask[..., :positions.shape[0]]  # (a last dimension of 1 stays 1)
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        mask = mask.unflatten(1, (-1, group) if mask.shape[1] == num_q_heads else (1, 1))  # [B?, Hkv?, G?, Lq?, S]
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            bias = bias + mask.to(dtype)
    additive = torch.where(allowed, bias, -math.inf)  # [B, Hkv or 1, G or 1, Lq or 1, S]
    heads = num_kv_heads if additive.shape[1] > 1 else 1
    return additive.expand(batch, heads, group, query_len, -1).reshape(batch, heads, group * query_len, -1)
