"""The public op, attention_with_kvcache: decode attention over a KV cache for the whole family.

validation.py checks the arguments (ValueError / TypeError naming the argument, before any kernel runs),
library.py registers the torch.library op, dispatch.py picks the kernel family and its config."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..kernels import family_of_config
from ..spec import default_softmax_scale
from . import prepared
from .dispatch import kernel_family_for
from .library import attention_with_kvcache_op, mask_key_range_op
from .prepared import WrapperCall, prepared_call, run_prepared_with_config, wrapper_key
from .validation import check_values, debug_checks_enabled, validate_inputs, validate_key_range_arguments


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
    kv_range: Optional[Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = True,
    num_splits: Optional[int] = None,
    return_lse: bool = False,
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    sinks: Optional[Tensor] = None,
    window_size: tuple[int, int] = (-1, -1),
):
    """Decode attention over a KV cache for the whole family (MHA/GQA/MQA, GTA, MLA, GLA).

    q [B, Lq, Hq, Dq] (MLA/GLA: the absorbed query); k_cache [B, S, Hkv, Dk] or paged [P, page, Hkv, Dk];
    v_cache like k_cache, or None when V is k_cache itself (GTA/MLA/GLA); q_rope [B, Lq, Hq, Dr] and
    k_rope_cache [B, S, Dr] (one rope key shared by every head); cache_seqlens [B] int32 (the Lq new tokens
    included); page_table [B, pages] int32; attn_mask bool (True = attend) or additive, broadcastable to
    [B, Hq, Lq, S]; kv_range: attn_mask's key range, mask_key_range(attn_mask, B, S), made once for the calls of
    a step that share the mask (each call is then spared its reduction, a kernel launch; its values are not
    checked: it must be this mask's); causal: query i sits at position cache_seqlens[b] - Lq + i. Returns out
    [B, Lq, Hq, Dv]; with return_lse also lse [B, Lq, Hq] (float32, natural log; -inf where a query attends to
    nothing, whose output is then 0).

    FlashAttention's extensions, with flash_attn_with_kvcache's names and meanings: softcap > 0 caps the scaled
    scores to softcap * tanh(scores / softcap) (Gemma2); alibi_slopes [Hq] or [B, Hq] float32 adds
    -slope * |query_pos - key_pos| (BLOOM); sinks [Hq] (float32 or q's dtype) are learned logits that join each
    row's softmax denominator with no value, lse included (GPT-OSS); window_size (left, right), -1 = unlimited:
    key j is seen when query_pos - left <= j <= query_pos + right (key blocks outside are not read). Latent
    layouts (MLA/GLA) take sinks and window_size only. The README's "The op" section has the whole contract."""
    # A repeat of a validated call (same tensor metadata, same scalars of the same Python types) skips
    # validation, as the op's prepared calls do (op/prepared.py says why that is safe). Not while Dynamo traces
    # this function (fake tensors have no data_ptr): it then validates every time, at trace time.
    key = validated = None
    if type(q) is Tensor and not torch.compiler.is_compiling():
        try:
            key = wrapper_key(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              kv_range, softmax_scale, causal, num_splits, softcap, alibi_slopes, sinks, window_size)
            validated = prepared.wrapper_calls.get(key)
        except Exception:  # an argument the key cannot hold (not a tensor, unhashable): validation names it
            key = None
    if validated is None:
        spec, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                  softmax_scale, num_splits, kv_range, softcap, alibi_slopes, sinks, window_size,
                                  causal=causal)
        validated = WrapperCall(float(default_softmax_scale(spec.head_dim_q, spec.rope_dim) if softmax_scale is None
                                      else softmax_scale))
        if key is not None:
            prepared.wrapper_calls.remember(key, validated)
    # A validated CUDA call with nothing that hooks into the dispatcher (no autograd, no torch function or
    # dispatch mode, no profiler) runs its prepared call directly: the dispatcher's boxing of the arguments into a
    # Python kernel costs about as much host time as the prepared call itself. The wrapper's key settles the op's
    # (the op's scalars are the wrapper's, converted), so a repeat looks up no second key.
    if key is not None and _runs_directly(q):
        call = validated.prepared
        if call is None:
            call = validated.prepared = prepared_call(*_op_arguments(
                q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range,
                validated.scale, causal, num_splits, softcap, alibi_slopes, sinks, window_size))
        elif debug_checks_enabled():  # what prepared_call checks on a repeat
            check_values(k_cache, cache_seqlens, page_table, call.shape, attn_mask)
        # (an eager call from user code: it may hold its split partials, and the lse it drops without return_lse,
        # in its thread's stream workspace)
        out, lse = call.run(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                            kv_range, alibi_slopes, sinks, hold_workspace=True, keep_lse=bool(return_lse))
    else:
        out, lse = attention_with_kvcache_op(*_op_arguments(
            q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range,
            validated.scale, causal, num_splits, softcap, alibi_slopes, sinks, window_size))
    return (out, lse) if return_lse else out


def _op_arguments(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range, scale,
                  causal, num_splits, softcap, alibi_slopes, sinks, window_size) -> tuple:
    """The op's arguments, its scalars as the schema types them (a repeat on the direct path needs none)."""
    return (q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, scale, bool(causal),
            int(num_splits or 0), kv_range, float(softcap), alibi_slopes, sinks, int(window_size[0]),
            int(window_size[1]))


def mask_key_range(attn_mask: Tensor, batch: int, capacity: int) -> Tensor:
    """attn_mask's key range for the calls of a step that share it (attention_with_kvcache's kv_range): [3, batch]
    int32, per sequence the first key any row may attend to, one past the last, and whether the mask allows every
    key between (then not read). batch and capacity are the calls' B and S; the mask broadcasts to [B, Hq, Lq, S].
    One small kernel on CUDA (PyTorch ops on CPU), as FlashInfer's plan step: once per step, not per layer."""
    validate_key_range_arguments(attn_mask, batch, capacity)
    return mask_key_range_op(attn_mask, batch, capacity)


def _runs_directly(q: Tensor) -> bool:
    """Whether a validated call skips the dispatcher: on CUDA, with no autograd, torch function or dispatch mode, or
    profiler to see the op."""
    return q.is_cuda and not (
        torch.is_grad_enabled() or torch._C._is_torch_function_mode_enabled()
        or torch._C._len_torch_dispatch_stack() > 0 or torch._C._autograd._profiler_enabled())


def attention_with_kvcache_config(q, k_cache, v_cache=None, *, config, q_rope=None, k_rope_cache=None,
                                  cache_seqlens=None, page_table=None, attn_mask=None, softmax_scale=None,
                                  causal=True, softcap=0.0, alibi_slopes=None, sinks=None, window_size=(-1, -1)):
    """Run the kernels with an explicit config (the tuner and benchmarks use this): a PortableConfig for the
    portable kernels, a LatentHopperConfig for the Hopper latent kernel (ValueError where it cannot run)."""
    family_of_config(config)  # (TypeError naming config for anything else, before a key holds it)
    spec, shape = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                  softmax_scale, None, None, softcap, alibi_slopes, sinks, window_size, causal=causal)
    if not q.is_cuda and not debug_checks_enabled():  # CPU values are always checked (validate_inputs did with debug)
        check_values(k_cache, cache_seqlens, page_table, shape, attn_mask)
    if softmax_scale is None:
        softmax_scale = default_softmax_scale(spec.head_dim_q, spec.rope_dim)
    return run_prepared_with_config(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                    float(softmax_scale), bool(causal), config, float(softcap), alibi_slopes, sinks,
                                    tuple(window_size))


__all__ = ["attention_with_kvcache", "attention_with_kvcache_config", "attention_with_kvcache_op", "kernel_family_for",
           "mask_key_range"]
