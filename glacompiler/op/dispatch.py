"""From a validated call to a kernel launch: the first kernel family that supports the call (kernels/), its
config (the user's, else a tuned table's, else the family's heuristic) and its launcher."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..kernels import KernelCall, KernelFamily, choose_family
from ..kernels.common.device_limits import cuda_index
from ..kernels.common.splits import device_multiprocessors
from ..spec import AttentionSpec, ProblemShape
from ..tables import lookup
from ..tables.lookup import tuned_config
from .validation import validate_inputs


def device_card(device: torch.device) -> str:
    """A CUDA device's name, which some families' heuristic costs depend on (heuristic_config's card); "" on CPU."""
    if device.type != "cuda":
        return ""
    return lookup.device_name(cuda_index(device))


def choose_config(family: KernelFamily, spec: AttentionSpec, shape: ProblemShape, device: torch.device,
                  num_splits: int = 0):
    """A family's config for a call: a tuned table's (see glacompiler.tables), else the family's heuristic;
    num_splits > 0 overrides the split count."""
    config = tuned_config(family, spec, shape, device)
    if config is None:
        config = family.heuristic_config(spec, shape, device_multiprocessors(device), device_card(device))
    return family.with_splits(config, num_splits) if num_splits > 0 else config


def kernel_family(spec: AttentionSpec, shape: ProblemShape, call: KernelCall) -> KernelFamily:
    """The family that runs a call; ValueError where none can (CPU tensors outside the interpreter)."""
    family = choose_family(spec, shape, call)
    if family is None:
        raise ValueError("no kernel family runs CPU tensors unless TRITON_INTERPRET=1 (the op's CPU path is "
                         "PyTorch's CPU attention)")
    return family


def choose_kernel(spec: AttentionSpec, shape: ProblemShape, call: KernelCall, num_splits: int = 0):
    """(family, config) that run a call; ValueError where no family can (CPU tensors outside the interpreter)."""
    family = kernel_family(spec, shape, call)
    return family, choose_config(family, spec, shape, call.q.device, num_splits)


def kernel_family_for(q, k_cache, v_cache=None, *, q_rope=None, k_rope_cache=None, cache_seqlens=None,
                      page_table=None, attn_mask=None) -> Optional[KernelFamily]:
    """The kernel family that runs attention_with_kvcache with these arguments, or None where PyTorch's
    CPU attention does (CPU tensors outside the Triton interpreter). For reports, demos and tests."""
    spec, shape = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                  None, None)
    call = KernelCall(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, 1.0, True)
    return choose_family(spec, shape, call)


def empty_outputs(q: Tensor, k_cache: Tensor, v_cache: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Uninitialised (out [B, Lq, Hq, Dv], lse [B, Lq, Hq] float32): the op's outputs (and all of them for a
    batch of 0 sequences)."""
    batch, query_len, num_q_heads, _ = q.shape
    head_dim_v = (k_cache if v_cache is None else v_cache).shape[-1]
    return (q.new_empty((batch, query_len, num_q_heads, head_dim_v)),
            q.new_empty((batch, query_len, num_q_heads), dtype=torch.float32))


def validated_call(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                   causal, kv_range, softcap, alibi_slopes, sinks, window_size, read_values=True):
    """(spec, shape, KernelCall, copy_seqlens, copy_page_table) of a call, validated (ValueError/TypeError naming
    the argument). The kernels read lengths and page-table columns as adjacent entries (the page table's row
    stride is theirs): a strided or expanded view is made contiguous (rare; a small copy), and the flags say
    whether calls with this metadata need that copy."""
    spec, shape = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                  softmax_scale, None, kv_range, softcap, alibi_slopes, sinks, window_size,
                                  read_values)
    copy_seqlens = cache_seqlens is not None and cache_seqlens.stride(0) != 1 and shape.batch > 1
    copy_page_table = page_table is not None and page_table.stride(1) != 1 and page_table.shape[1] > 1
    if copy_seqlens:
        cache_seqlens = cache_seqlens.contiguous()
    if copy_page_table:
        page_table = page_table.contiguous()
    call = KernelCall(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                      softmax_scale, causal, kv_range, float(softcap), alibi_slopes, sinks, tuple(window_size))
    return spec, shape, call, copy_seqlens, copy_page_table
