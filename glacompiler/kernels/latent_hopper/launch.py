"""Launch the Hopper latent kernel (and, with several splits, the shared LSE combine). No host-device sync."""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from ...spec import AttentionSpec, ProblemShape
from ..common.extensions import kernel_extensions
from ..common.key_bounds import resolve_key_bounds
from ..common.split_buffers import SplitBuffers
from ..common.tiles import rope_tile_width
from ..common.triton_launch import launch
from .config import NUM_WARPS, LatentHopperConfig
from .render import latent_hopper_module, swizzle_bytes


@functools.lru_cache(maxsize=None)
def tma_tile_layout(tile_width: int, element_bytes: int):
    """Shared-memory layout of a [BLOCK_N, tile_width] key tile: the widest swizzle its rows allow (TMA
    writes it, wgmma reads it)."""
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout(swizzle_byte_width=swizzle_bytes(tile_width * element_bytes),
                                element_bitwidth=8 * element_bytes, rank=2)


def _tma_descriptor(cache: Tensor, width: int, tile_width: int, copy_rows: int):
    """TMA descriptor of the cache as [rows, width], [copy_rows, tile_width] keys per copy (columns past
    `width` read as zeros)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    rows = cache.shape[0] * cache.shape[1]
    return TensorDescriptor(cache, [rows, width], [cache.stride(1), 1], [copy_rows, tile_width],
                            tma_tile_layout(tile_width, cache.element_size()))


def launch_latent_hopper(q: Tensor, k_cache: Tensor, q_rope: Tensor, k_rope_cache: Tensor,
                         cache_seqlens: Optional[Tensor], page_table: Optional[Tensor], attn_mask: Optional[Tensor],
                         softmax_scale: float, causal: bool, spec: AttentionSpec, shape: ProblemShape,
                         config: LatentHopperConfig, kv_range: Optional[Tensor] = None,
                         sinks: Optional[Tensor] = None, window_size: tuple = (-1, -1)) -> tuple[Tensor, Tensor]:
    """softcap and ALiBi do not occur in latent models: the family does not take them (support.py)."""
    batch, query_len, _, _ = q.shape
    tile = config.tile_for(shape.page_size)
    module = latent_hopper_module(spec, tile)
    buffers = SplitBuffers.allocate(q, spec.head_dim_v, config.num_splits)
    extensions = kernel_extensions(softmax_scale, 0.0, None, sinks, window_size, q)
    keys = resolve_key_bounds(attn_mask, kv_range, cache_seqlens, batch, q.shape[2], query_len, shape.capacity,
                              causal, q.device, extensions.positions_matter)
    k_desc = _tma_descriptor(k_cache, spec.num_kv_heads * spec.head_dim_k, spec.head_dim_k, tile.copy_rows)
    k_rope_desc = _tma_descriptor(k_rope_cache, spec.rope_dim, rope_tile_width(spec.rope_dim), tile.copy_rows)
    rows = spec.group_size * query_len
    grid = (spec.num_kv_heads * -(-rows // tile.block_m), batch, config.num_splits)
    args = (
        q, q_rope, k_desc, k_rope_desc, keys.lengths, keys.kv_begin, keys.kv_end, keys.mask,
        keys.lengths if page_table is None else page_table,
        buffers.split_out, buffers.split_lse, extensions.sinks,
        *q.stride()[:3],
        *q_rope.stride()[:3],
        0 if page_table is None else page_table.stride(0),
        shape.capacity,  # keys per sequence (a contiguous cache's rows per sequence): lengths are bounded by it
        *keys.mask_strides,
        *buffers.out_strides,
        *buffers.lse_strides,
        extensions.qk_scale_log2,
        config.num_splits,
        extensions.window_left,
        extensions.window_right,
    )
    constexprs = dict(
        G=spec.group_size,
        LQ=query_len,
        PAGE_SIZE=shape.page_size,
        # With one query token every key below the length is visible: causality changes nothing.
        CAUSAL=causal and query_len > 1,
        HAS_MASK=attn_mask is not None,
        MASK_IS_BOOL=attn_mask is not None and attn_mask.dtype == torch.bool,
        MASK_PER_ROW=keys.mask_per_row,
        HAS_SINKS=extensions.flags["HAS_SINKS"],
        HAS_WINDOW=extensions.flags["HAS_WINDOW"],
    )
    # Gluon places its own pipeline: num_stages is the JIT's default and changes nothing.
    launch(module.latent_decode_hopper_kernel, grid, args, constexprs, num_warps=NUM_WARPS, num_stages=3)
    buffers.combine()
    return buffers.out, buffers.lse
