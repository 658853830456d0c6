"""The op as a torch.library custom op: its schema, the fake (meta) implementation that graphs, dynamic shapes
and CUDA graphs see, and the device implementations (CPU: PyTorch's fused CPU attention, op/cpu_attention.py, or
the kernels under the Triton interpreter; CUDA: the kernels)."""
from __future__ import annotations

import torch

from ..kernels.common.mask_range import (KEY_RANGE_ROWS, mask_as_kernel_operand, mask_key_range,
                                        mask_key_range_reference)
from ..kernels.common.interpreter import triton_interpreter_enabled
from .cpu_attention import cpu_attention
from .dispatch import empty_outputs
from .into_buffers import INTO_SCHEMA, run_into
from .prepared import run_prepared
from .validation import check_values, debug_checks_enabled, validate_inputs

# The op is defined with the low-level torch.library API rather than torch.library.custom_op: the latter wraps
# every call in Python layers (autograd dispatch, an output-aliasing check) that cost more host time than the
# kernel launches on a decode step. The op has no backward; decode runs under no_grad.
_LIBRARY = torch.library.Library("glacompiler", "DEF")
ATTENTION_SCHEMA = (
    "attention_with_kvcache(Tensor q, Tensor k_cache, Tensor? v_cache, Tensor? q_rope, Tensor? k_rope_cache, "
    "Tensor? cache_seqlens, Tensor? page_table, Tensor? attn_mask, float softmax_scale, bool causal, "
    "int num_splits, Tensor? kv_range=None, float softcap=0.0, Tensor? alibi_slopes=None, Tensor? sinks=None, "
    "int window_left=-1, int window_right=-1) -> (Tensor, Tensor)"
)
_LIBRARY.define(ATTENTION_SCHEMA)
# kv_range: attn_mask's key range as mask_key_range gives it, computed once for several sites that share a mask
# (the backend hoists it out of the layers); None computes it per call. A hint that saves a kernel launch: the
# mask alone defines the result, so the PyTorch path ignores it. softcap, alibi_slopes, sinks and window_size are
# FlashAttention's extensions (glacompiler.reference has their meanings); window_size is two ints, not an int[2]:
# a list in the schema sends Inductor's C++ wrapper through a Python callback (custom_op_wrapper) on every call
# instead of its no-Python dispatcher call (cpp_wrapper_cpu.py, _compatible_with_stableivalue).
_LIBRARY.define("mask_key_range(Tensor attn_mask, SymInt batch, SymInt capacity) -> Tensor")
# The op's kernels written into buffers a compiled graph allocated, for kernels Inductor cannot launch itself
# (op/into_buffers.py); CUDA only: the graphs that call it launch their kernels on CUDA.
_LIBRARY.define(INTO_SCHEMA)


def _attention_cpu(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                   causal, num_splits, kv_range=None, softcap=0.0, alibi_slopes=None, sinks=None, window_left=-1,
                   window_right=-1):
    window_size = (window_left, window_right)
    _, shape = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                               softmax_scale, None, kv_range, softcap, alibi_slopes, sinks, window_size)
    if not debug_checks_enabled():  # (with GLACOMPILER_DEBUG=1 validate_inputs has checked them)
        check_values(k_cache, cache_seqlens, page_table, shape, attn_mask)
    if shape.batch == 0:
        return empty_outputs(q, k_cache, v_cache)
    if triton_interpreter_enabled():
        return run_prepared(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                            softmax_scale, causal, num_splits, kv_range, softcap, alibi_slopes, sinks, window_left,
                            window_right)
    return cpu_attention(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                         softmax_scale, causal, softcap, alibi_slopes, sinks, window_size)


def _mask_key_range(attn_mask, batch, capacity):
    """The kernel on CUDA and under the interpreter, PyTorch ops on CPU otherwise."""
    if batch == 0:
        return attn_mask.new_empty((KEY_RANGE_ROWS, 0), dtype=torch.int32)
    on_kernels = attn_mask.device.type == "cuda" or triton_interpreter_enabled()
    reduce = mask_key_range if on_kernels else mask_key_range_reference
    return reduce(mask_as_kernel_operand(attn_mask), batch, capacity, attn_mask.dtype == torch.bool)


_LIBRARY.impl("attention_with_kvcache", _attention_cpu, "CPU")
_LIBRARY.impl("attention_with_kvcache", run_prepared, "CUDA")
_LIBRARY.impl("mask_key_range", _mask_key_range, "CPU")
_LIBRARY.impl("mask_key_range", _mask_key_range, "CUDA")
_LIBRARY.impl("attention_into", run_into, "CUDA")


@torch.library.register_fake("glacompiler::mask_key_range", lib=_LIBRARY)
def _mask_key_range_fake(attn_mask, batch, capacity):
    return attn_mask.new_empty((KEY_RANGE_ROWS, batch), dtype=torch.int32)


@torch.library.register_fake("glacompiler::attention_with_kvcache", lib=_LIBRARY)
def _attention_with_kvcache_fake(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                 softmax_scale, causal, num_splits, kv_range=None, softcap=0.0, alibi_slopes=None,
                                 sinks=None, window_left=-1, window_right=-1):
    return empty_outputs(q, k_cache, v_cache)


@torch.library.register_fake("glacompiler::attention_into", lib=_LIBRARY)
def _attention_into_fake(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                         causal, kv_range, softcap, alibi_slopes, sinks, window_left, window_right, plan_key, out, lse):
    return None


# (out, lse) = attention_with_kvcache_op(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table,
#                                        attn_mask, softmax_scale, causal, num_splits, kv_range, softcap, alibi_slopes,
#                                        sinks, window_left, window_right); num_splits 0 = tuned / heuristic.
attention_with_kvcache_op = torch.ops.glacompiler.attention_with_kvcache.default
# key_range = mask_key_range_op(attn_mask, batch, capacity): [3, batch] int32 (kernels/common/mask_range.py)
mask_key_range_op = torch.ops.glacompiler.mask_key_range.default
