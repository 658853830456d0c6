"""The public op: validation, the torch.library custom op with its fake implementation, and dispatch to
the PyTorch path (CPU), the generated Triton kernels (CUDA) or those kernels under the interpreter."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
from torch import Tensor

from .config import KernelConfig, device_multiprocessors, heuristic_config
from .launch import launch_decode_attention
from .reference import attention_with_kvcache_reference
from .spec import AttentionSpec, default_softmax_scale
from .validation import ProblemShape, validate_inputs


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def select_config(spec: AttentionSpec, shape: ProblemShape, device: torch.device, num_splits: int) -> KernelConfig:
    """Config for one call: tuned tables first (see glacompiler.tuning), then the heuristic; an explicit
    num_splits overrides the split count."""
    from .tuning.lookup import lookup_config  # late import: tuning pulls in optional pieces

    config = lookup_config(spec, shape, device)
    if config is None:
        config = heuristic_config(spec, shape.batch, shape.capacity, shape.query_len, device_multiprocessors(device))
    if num_splits > 0:
        config = dataclasses.replace(config, num_splits=num_splits)
    return config


def _run_kernels(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                 softmax_scale, causal, num_splits, config: Optional[KernelConfig] = None):
    spec, shape = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                  softmax_scale, None)
    if cache_seqlens is None:
        cache_seqlens = torch.full((shape.batch,), shape.capacity, dtype=torch.int32, device=q.device)
    if config is None:
        config = select_config(spec, shape, q.device, num_splits)
    return launch_decode_attention(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                   softmax_scale, causal, spec, shape, config)


@torch.library.custom_op("glacompiler::attention_with_kvcache", mutates_args=())
def attention_with_kvcache_op(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Optional[Tensor],
    q_rope: Optional[Tensor],
    k_rope_cache: Optional[Tensor],
    cache_seqlens: Optional[Tensor],
    page_table: Optional[Tensor],
    attn_mask: Optional[Tensor],
    softmax_scale: float,
    causal: bool,
    num_splits: int,
) -> tuple[Tensor, Tensor]:
    """num_splits 0 = tuned table / heuristic. Returns (out, lse)."""
    if q.device.type == "cpu" and not triton_interpreter_enabled():
        out, lse = attention_with_kvcache_reference(
            q, k_cache, v_cache, q_rope=q_rope, k_rope_cache=k_rope_cache, cache_seqlens=cache_seqlens,
            page_table=page_table, attn_mask=attn_mask, softmax_scale=softmax_scale, causal=causal,
        )
        return out.contiguous(), lse  # the fake implementation promises contiguous outputs, as the kernels give
    return _run_kernels(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                        softmax_scale, causal, num_splits)


@attention_with_kvcache_op.register_fake
def _attention_with_kvcache_fake(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                 softmax_scale, causal, num_splits):
    batch, query_len, num_q_heads, _ = q.shape
    head_dim_v = (k_cache if v_cache is None else v_cache).shape[-1]
    out = q.new_empty((batch, query_len, num_q_heads, head_dim_v))
    lse = q.new_empty((batch, query_len, num_q_heads), dtype=torch.float32)
    return out, lse


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

    See DESIGN.md for the contract: out [B, Lq, Hq, Dv]; with return_lse also lse [B, Lq, Hq] (float32,
    natural log; -inf where a query attends to nothing, whose output is then 0)."""
    spec, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              softmax_scale, num_splits)
    if softmax_scale is None:
        softmax_scale = default_softmax_scale(spec.head_dim_q, spec.rope_dim)
    out, lse = attention_with_kvcache_op(
        q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
        float(softmax_scale), bool(causal), int(num_splits or 0),
    )
    return (out, lse) if return_lse else out


def attention_with_kvcache_config(q, k_cache, v_cache=None, *, config: KernelConfig, q_rope=None, k_rope_cache=None,
                                  cache_seqlens=None, page_table=None, attn_mask=None, softmax_scale=None,
                                  causal=True):
    """Run the generated kernels with an explicit KernelConfig (the tuner and benchmarks use this)."""
    spec, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              softmax_scale, None)
    if softmax_scale is None:
        softmax_scale = default_softmax_scale(spec.head_dim_q, spec.rope_dim)
    return _run_kernels(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                        float(softmax_scale), causal, 0, config)
