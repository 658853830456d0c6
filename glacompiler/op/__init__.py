"""The public op, attention_with_kvcache: decode attention over a KV cache for the whole family.

validation.py checks the arguments (ValueError / TypeError naming the argument, before any kernel runs),
library.py registers the torch.library op, dispatch.py picks the kernel family and its config."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..spec import default_softmax_scale
from .dispatch import kernel_family_for, run_kernels
from .library import attention_with_kvcache_op
from .validation import validate_inputs


def attention_with_kvcache(
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
    num_splits: Optional[int] = None,
    return_lse: bool = False,
):
    """Decode attention over a KV cache for the whole family (MHA/GQA/MQA, GTA, MLA, GLA).

    q [B, Lq, Hq, Dq] (MLA/GLA: the absorbed query); k_cache [B, S, Hkv, Dk] or paged [P, page, Hkv, Dk];
    v_cache like k_cache, or None when V is k_cache itself (GTA/MLA/GLA); q_rope [B, Lq, Hq, Dr] and
    k_rope_cache [B, S, Dr] (one rope key shared by every head); cache_seqlens [B] int32 (the Lq new tokens
    included); page_table [B, pages] int32; attn_mask bool (True = attend) or additive, broadcastable to
    [B, Hq, Lq, S]; causal: query i sits at position cache_seqlens[b] - Lq + i. Returns out [B, Lq, Hq, Dv];
    with return_lse also lse [B, Lq, Hq] (float32, natural log; -inf where a query attends to nothing, whose
    output is then 0). The README's "The op" section has the whole contract."""
    spec, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              softmax_scale, num_splits)
    if softmax_scale is None:
        softmax_scale = default_softmax_scale(spec.head_dim_q, spec.rope_dim)
    out, lse = attention_with_kvcache_op(
        q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
        float(softmax_scale), bool(causal), int(num_splits or 0),
    )
    return (out, lse) if return_lse else out


def attention_with_kvcache_config(q, k_cache, v_cache=None, *, config, q_rope=None, k_rope_cache=None,
                                  cache_seqlens=None, page_table=None, attn_mask=None, softmax_scale=None,
                                  causal=True):
    """Run the kernels with an explicit config (the tuner and benchmarks use this): a PortableConfig for the
    portable kernels, a LatentHopperConfig for the Hopper latent kernel (ValueError where it cannot run)."""
    spec, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              softmax_scale, None)
    if softmax_scale is None:
        softmax_scale = default_softmax_scale(spec.head_dim_q, spec.rope_dim)
    return run_kernels(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                       float(softmax_scale), causal, 0, config=config)


__all__ = ["attention_with_kvcache", "attention_with_kvcache_config", "attention_with_kvcache_op", "kernel_family_for"]
