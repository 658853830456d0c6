"""Launch the Hopper latent kernel (and, with several splits, the shared LSE combine). No host-device sync."""
from __future__ import annotations

import functools
from typing import Optional

from torch import Tensor

from ...spec import AttentionSpec, ProblemShape
from ..common.extensions import kernel_extensions
from ..common.key_bounds import KeyBoundsPlan
from ..common.split_buffers import SplitBuffers
from ..common.tiles import rope_tile_width
from ..common.triton_launch import PreparedLaunch
from ..family import KernelCall
from .config import LatentHopperConfig
from .render import latent_hopper_module, swizzle_bytes

# Positions in run's launch arguments
K_CACHE_ARGUMENT, K_ROPE_ARGUMENT, LENGTHS_ARGUMENT, KV_BEGIN_ARGUMENT, KV_END_ARGUMENT, MASK_ARGUMENT = 2, 3, 4, 5, 6, 7


@functools.lru_cache(maxsize=None)
def tma_tile_layout(tile_width: int, element_bytes: int):
    """Shared-memory layout of a [copy_rows, tile_width] key tile: the widest swizzle its rows allow (TMA
    writes it, wgmma reads it)."""
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout(swizzle_byte_width=swizzle_bytes(tile_width * element_bytes),
                                element_bitwidth=8 * element_bytes, rank=2)


class _RowsView:
    """A cache as the 2-D [rows, width] TMA view the kernel copies [copy_rows, tile_width] key tiles from
    (columns past `width` read as zeros). Shape, strides, block shape and layout follow the call's metadata;
    `descriptor` makes one call's TensorDescriptor (its base is the call's cache)."""

    __slots__ = ("shape", "strides", "block_shape", "layout")

    def __init__(self, cache: Tensor, width: int, tile_width: int, copy_rows: int):
        self.shape = [cache.shape[0] * cache.shape[1], width]
        self.strides = [cache.stride(1), 1]
        self.block_shape = [copy_rows, tile_width]
        self.layout = tma_tile_layout(tile_width, cache.element_size())

    def descriptor(self, cache: Tensor):
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        return TensorDescriptor(cache, self.shape, self.strides, self.block_shape, self.layout)


class LatentHopperLaunchPlan:
    """Everything a launch of the Hopper latent kernel derives from a call's metadata (see
    PortableLaunchPlan); `run` builds the TMA descriptors of the call's caches and launches. softcap and ALiBi
    do not occur in latent models: the family does not take them (support.py)."""

    def __init__(self, call: KernelCall, spec: AttentionSpec, shape: ProblemShape, config: LatentHopperConfig):
        q, q_rope, page_table = call.q, call.q_rope, call.page_table
        batch, query_len, _, _ = q.shape
        tile = config.tile_for(spec, shape.page_size)
        module = latent_hopper_module(spec, tile)
        self.buffers = SplitBuffers(q, spec.head_dim_v, config.num_splits)
        extensions = kernel_extensions(call.softmax_scale, 0.0, None, call.sinks, call.window_size)
        self.keys = KeyBoundsPlan(call.attn_mask, call.kv_range, call.cache_seqlens, batch, q.shape[2], query_len,
                                  shape.capacity, call.causal, q.device, extensions.positions_matter)
        self.k_view = _RowsView(call.k_cache, spec.num_kv_heads * spec.head_dim_k,
                                tile.latent_copy_width(spec.head_dim_k), tile.copy_rows)
        self.k_rope_view = _RowsView(call.k_rope_cache, spec.rope_dim, rope_tile_width(spec.rope_dim),
                                     tile.copy_rows)
        self.tail = (
            *q.stride()[:3],
            *q_rope.stride()[:3],
            0 if page_table is None else page_table.stride(0),
            shape.capacity,  # keys per sequence (a contiguous cache's rows per sequence): lengths are bounded by it
            *self.keys.mask_strides,
            *self.buffers.out_strides,
            *self.buffers.lse_strides,
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
            CAUSAL=call.causal and query_len > 1,
            **self.keys.mask_flags,
            HAS_SINKS=extensions.flags["HAS_SINKS"],
            HAS_WINDOW=extensions.flags["HAS_WINDOW"],
        )
        rows = spec.group_size * query_len
        grid = (spec.num_kv_heads * -(-rows // tile.block_m), batch, config.num_splits)
        # Gluon places its own pipeline: num_stages is the JIT's default and changes nothing.
        # run passes the caches themselves: the launch makes (or remembers) their TMA descriptors.
        self.launch = PreparedLaunch(module.latent_decode_hopper_kernel, grid, constexprs, num_warps=tile.num_warps,
                                     num_stages=3, descriptors={K_CACHE_ARGUMENT: self.k_view.descriptor,
                                                                K_ROPE_ARGUMENT: self.k_rope_view.descriptor},
                                     jit_forms=self.keys.jit_forms(MASK_ARGUMENT, LENGTHS_ARGUMENT, KV_BEGIN_ARGUMENT,
                                                                   KV_END_ARGUMENT))

    @property
    def launches(self) -> tuple:
        """Its launches of the attention kernel, as the portable plan's: one."""
        return (self.launch,)

    def run(self, q: Tensor, k_cache: Tensor, v_cache: Optional[Tensor], q_rope: Tensor, k_rope_cache: Tensor,
            cache_seqlens: Optional[Tensor], page_table: Optional[Tensor], attn_mask: Optional[Tensor],
            kv_range: Optional[Tensor], alibi_slopes: Optional[Tensor], sinks: Optional[Tensor], *,
            hold_workspace: bool = False, keep_lse: bool = True) -> tuple[Tensor, Tensor]:
        """(out, lse) of a call; hold_workspace, keep_lse: SplitBuffers.allocate_for_call's hold and keep_lse."""
        split_out, split_lse, out, lse = self.buffers.allocate_for_call(q, hold_workspace, keep_lse)
        self.launch_into(split_out, split_lse, q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table,
                         attn_mask, kv_range, alibi_slopes, sinks)
        self.buffers.combine(split_out, split_lse, out, lse)
        return out, lse

    def launch_into(self, split_out: Tensor, split_lse: Tensor, q: Tensor, k_cache: Tensor, v_cache: Optional[Tensor],
                    q_rope: Tensor, k_rope_cache: Tensor, cache_seqlens: Optional[Tensor], page_table: Optional[Tensor],
                    attn_mask: Optional[Tensor], kv_range: Optional[Tensor], alibi_slopes: Optional[Tensor],
                    sinks: Optional[Tensor]) -> None:
        """The kernel's launch into buffers allocated as `buffers.allocate` makes them (the outputs with one split);
        a compiled graph that allocates them and launches the combine itself calls this (op/into_buffers.py)."""
        # The dense flag goes unused: this kernel's TMA key copies never wait for its mask loads.
        lengths, mask, kv_begin, kv_end, _ = self.keys.resolve(attn_mask, kv_range, cache_seqlens)
        self.launch((
            q, q_rope, k_cache, k_rope_cache, lengths, kv_begin, kv_end, mask,
            lengths if page_table is None else page_table, split_out, split_lse, q if sinks is None else sinks,
            *self.tail,
        ))
