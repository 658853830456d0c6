"""The public op: validation, the torch.library custom op with its fake implementation, and dispatch to
the PyTorch path (CPU), the generated Triton kernels (CUDA) or those kernels under the interpreter."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

import torch
from torch import Tensor

from .config import KernelConfig, device_multiprocessors, heuristic_config
from .latent_hopper import LatentHopperConfig, latent_hopper_config, latent_hopper_unsupported, launch_latent_hopper
from .launch import launch_decode_attention, mask_as_kernel_operand, mask_key_range, mask_key_range_reference
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


def choose_config(q: Tensor, q_rope: Optional[Tensor], k_cache: Tensor, k_rope_cache: Optional[Tensor],
                  spec: AttentionSpec, shape: ProblemShape, num_splits: int) -> Union[KernelConfig, LatentHopperConfig]:
    """The op's kernel for a call: the Hopper latent kernel where it applies (latent_hopper.py), else the
    portable kernels with the tuned or heuristic config; num_splits > 0 overrides the split count."""
    if latent_hopper_unsupported(q, q_rope, k_cache, k_rope_cache, spec, shape) is None:
        config = latent_hopper_config(spec, shape, q.device)
        return dataclasses.replace(config, num_splits=num_splits) if num_splits > 0 else config
    return select_config(spec, shape, q.device, num_splits)


def _run_kernels(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                 softmax_scale, causal, num_splits, kv_range=None,
                 config: Optional[Union[KernelConfig, LatentHopperConfig]] = None):
    spec, shape = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                  softmax_scale, None, kv_range)
    if config is None:
        config = choose_config(q, q_rope, k_cache, k_rope_cache, spec, shape, num_splits)
    elif isinstance(config, LatentHopperConfig):
        reason = (latent_hopper_unsupported(q, q_rope, k_cache, k_rope_cache, spec, shape)
                  or config.problem_with(spec))
        if reason is not None:
            raise ValueError(f"config: the Hopper latent kernel cannot run this call ({reason})")
    if isinstance(config, LatentHopperConfig):
        return launch_latent_hopper(q, k_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                    softmax_scale, causal, spec, shape, config, kv_range)
    return launch_decode_attention(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                   softmax_scale, causal, spec, shape, config, kv_range)


# The op is defined with the low-level torch.library API rather than torch.library.custom_op: the latter wraps
# every call in Python layers (autograd dispatch, an output-aliasing check) that cost more host time than the
# kernel launches on a decode step. The op has no backward; decode runs under no_grad.
_LIBRARY = torch.library.Library("glacompiler", "DEF")
_LIBRARY.define(
    "attention_with_kvcache(Tensor q, Tensor k_cache, Tensor? v_cache, Tensor? q_rope, Tensor? k_rope_cache, "
    "Tensor? cache_seqlens, Tensor? page_table, Tensor? attn_mask, float softmax_scale, bool causal, "
    "int num_splits, Tensor? kv_range=None) -> (Tensor, Tensor)"
)
# kv_range: attn_mask's key range as mask_key_range gives it, computed once for several sites that share a mask
# (the backend hoists it out of the layers); None computes it per call. A hint that saves a kernel launch: the
# mask alone defines the result, so the PyTorch path ignores it.
_LIBRARY.define("mask_key_range(Tensor attn_mask, SymInt batch, SymInt capacity) -> Tensor")


def _attention_cpu(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                   causal, num_splits, kv_range=None):
    if triton_interpreter_enabled():
        return _run_kernels(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                            softmax_scale, causal, num_splits, kv_range)
    out, lse = attention_with_kvcache_reference(
        q, k_cache, v_cache, q_rope=q_rope, k_rope_cache=k_rope_cache, cache_seqlens=cache_seqlens,
        page_table=page_table, attn_mask=attn_mask, softmax_scale=softmax_scale, causal=causal,
    )
    return out.contiguous(), lse  # the fake implementation promises contiguous outputs, as the kernels give


def _mask_key_range(attn_mask, batch, capacity):
    """The kernel on CUDA and under the interpreter, PyTorch ops on CPU otherwise."""
    on_kernels = attn_mask.device.type == "cuda" or triton_interpreter_enabled()
    reduce = mask_key_range if on_kernels else mask_key_range_reference
    return reduce(mask_as_kernel_operand(attn_mask), batch, capacity, attn_mask.dtype == torch.bool)


_LIBRARY.impl("attention_with_kvcache", _attention_cpu, "CPU")
_LIBRARY.impl("attention_with_kvcache", _run_kernels, "CUDA")
_LIBRARY.impl("mask_key_range", _mask_key_range, "CPU")
_LIBRARY.impl("mask_key_range", _mask_key_range, "CUDA")


@torch.library.register_fake("glacompiler::mask_key_range", lib=_LIBRARY)
def _mask_key_range_fake(attn_mask, batch, capacity):
    return attn_mask.new_empty((2, batch), dtype=torch.int32)


@torch.library.register_fake("glacompiler::attention_with_kvcache", lib=_LIBRARY)
def _attention_with_kvcache_fake(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                 softmax_scale, causal, num_splits, kv_range=None):
    batch, query_len, num_q_heads, _ = q.shape
    head_dim_v = (k_cache if v_cache is None else v_cache).shape[-1]
    out = q.new_empty((batch, query_len, num_q_heads, head_dim_v))
    lse = q.new_empty((batch, query_len, num_q_heads), dtype=torch.float32)
    return out, lse


# (out, lse) = attention_with_kvcache_op(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table,
#                                        attn_mask, softmax_scale, causal, num_splits); num_splits 0 = tuned / heuristic.
attention_with_kvcache_op = torch.ops.glacompiler.attention_with_kvcache.default


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


def attention_with_kvcache_config(q, k_cache, v_cache=None, *, config: Union[KernelConfig, LatentHopperConfig],
                                  q_rope=None, k_rope_cache=None, cache_seqlens=None, page_table=None, attn_mask=None,
                                  softmax_scale=None, causal=True):
    """Run the generated kernels with an explicit config (the tuner and benchmarks use this): a KernelConfig
    for the portable kernels, a LatentHopperConfig for the Hopper latent kernel (ValueError where it cannot
    run)."""
    spec, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              softmax_scale, None)
    if softmax_scale is None:
        softmax_scale = default_softmax_scale(spec.head_dim_q, spec.rope_dim)
    return _run_kernels(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                        float(softmax_scale), causal, 0, config=config)
