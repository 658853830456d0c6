"""The Hopper path for MLA/GLA decode: which calls take it, its config (tile and split count) and its launch.

The kernel (templates/latent_decode_hopper.py.jinja) is written in Gluon and loads key blocks by TMA, so it
needs an sm_90 GPU, Triton with Gluon (3.6 on), a cache whose rows form a 2-D [rows, width] view with 16-byte
aligned strides, and pages of at least 16 keys. It takes any attn_mask: a key vector per sequence (a static
cache's filled prefix) or one per head or draft token (speculative decoding). Everything else (other GPUs, the
interpreter, pages of fewer keys) runs on the portable Triton kernels. The checks read shapes, strides and the
device only: no host-device sync.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
from torch import Tensor

from .codegen import (
    LATENT_HOPPER_BLOCK_N, LATENT_HOPPER_MIN_PAGE, LATENT_HOPPER_ROW_SPLIT_MAX_WIDTH, LatentHopperTile,
    decode_kernel_module, latent_copy_rows, latent_hopper_module, rope_tile_width, swizzle_bytes,
)
from .config import MAX_SPLITS, default_num_splits, device_multiprocessors
from .kernel_launch import launch
from .launch import LOG2_E, SplitBuffers, resolve_key_bounds
from .spec import AttentionSpec
from .validation import ProblemShape

LATENT_WIDTHS = (256, 512)
NUM_WARPS = 8  # two warpgroups


@dataclasses.dataclass(frozen=True)
class LatentHopperConfig:
    """Launch choice for the Hopper latent kernel (tiles: codegen.LatentHopperTile)."""

    num_splits: int = 1
    row_split: bool = False  # 128-row tiles, 64 rows per warpgroup (latents up to 256 wide)

    def tile_for(self, page_size: int) -> LatentHopperTile:
        return LatentHopperTile(self.row_split, latent_copy_rows(page_size))

    def __post_init__(self):
        if not 1 <= self.num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits must lie in [1, {MAX_SPLITS}], got {self.num_splits}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def problem_with(self, spec: AttentionSpec) -> Optional[str]:
        """Why this config cannot run a spec the kernel otherwise takes, or None."""
        if self.row_split and spec.head_dim_k > LATENT_HOPPER_ROW_SPLIT_MAX_WIDTH:
            return f"row_split tiles take latents up to {LATENT_HOPPER_ROW_SPLIT_MAX_WIDTH} wide"
        return None


@functools.lru_cache(maxsize=None)
def _is_sm90(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) == (9, 0)


@functools.lru_cache(maxsize=None)
def gluon_available() -> bool:
    try:
        from triton.experimental.gluon.language.nvidia.hopper import tma  # noqa: F401
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def _rows_view_problem(name: str, cache: Tensor, width: int) -> Optional[str]:
    """Why `cache` [pages or B, slots, (heads,) dims] is no 2-D [rows, width] TMA view, or None."""
    element = cache.element_size()
    if cache.stride(-1) != 1 or cache.data_ptr() % 16:
        return f"{name} is not 16-byte aligned with unit last stride"
    if cache.dim() == 4 and cache.shape[2] > 1 and cache.stride(2) != cache.shape[3]:
        return f"{name} heads are not adjacent"
    if cache.stride(0) != cache.shape[1] * cache.stride(1) or (cache.stride(1) * element) % 16:
        return f"{name} rows are not evenly spaced at a 16-byte multiple"
    if cache.stride(1) < width:
        return f"{name} rows overlap"
    return None


def latent_hopper_unsupported(q: Tensor, q_rope: Optional[Tensor], k_cache: Tensor, k_rope_cache: Optional[Tensor],
                              spec: AttentionSpec, shape: ProblemShape) -> Optional[str]:
    """None when this call runs on the Hopper latent kernel, else the reason it does not (for logs and tests)."""
    if q.device.type != "cuda":
        return "not on a CUDA device"
    if not _is_sm90(q.device.index if q.device.index is not None else torch.cuda.current_device()):
        return "not an sm_90 GPU"
    if not gluon_available():
        return "this Triton has no Gluon TMA support"
    return latent_layout_problem(q, q_rope, k_cache, k_rope_cache, spec, shape)


def _query_rows_problem(name: str, query: Tensor) -> Optional[str]:
    """Query rows are copied in 16-byte pieces (cp.async): the JIT must see 16-byte aligned rows."""
    if query.data_ptr() % 16 or any(size > 1 and stride % 16 for size, stride in zip(query.shape[:3], query.stride()[:3])):
        return f"{name} rows are not 16-element aligned"
    return None


def latent_layout_problem(q: Tensor, q_rope: Optional[Tensor], k_cache: Tensor, k_rope_cache: Optional[Tensor],
                          spec: AttentionSpec, shape: ProblemShape) -> Optional[str]:
    """What keeps a call off the Hopper latent kernel on an sm_90 GPU, or None.

    Every latent layout the kernel can run takes it, however few packed (query head, token) rows a latent head
    has: on an H100 it timed at least as fast as the portable kernels' best choice from 8 rows per latent head
    on, batch 1 to 128 (benchmarks/RESULTS.md)."""
    if not spec.tied or spec.head_dim_q != spec.head_dim_k or spec.head_dim_k not in LATENT_WIDTHS:
        return f"not a latent layout of width {' or '.join(map(str, LATENT_WIDTHS))}"
    if spec.rope_dim == 0:
        return "no rope key"
    if spec.dtype not in ("bfloat16", "float16"):
        return f"dtype {spec.dtype}"
    if 0 < shape.page_size < LATENT_HOPPER_MIN_PAGE:
        return f"page size {shape.page_size} is below {LATENT_HOPPER_MIN_PAGE}"
    return (_query_rows_problem("q", q) or _query_rows_problem("q_rope", q_rope)
            or _rows_view_problem("k_cache", k_cache, spec.num_kv_heads * spec.head_dim_k)
            or _rows_view_problem("k_rope_cache", k_rope_cache, spec.rope_dim))


def latent_hopper_config(spec: AttentionSpec, shape: ProblemShape, device: torch.device) -> LatentHopperConfig:
    """128-row tiles where a latent head has more than 64 rows and the latent fits one warpgroup's accumulator;
    then the fewest splits that fill the GPU (one program per SM: the tile takes most of its shared memory)."""
    rows = spec.group_size * shape.query_len
    row_split = spec.head_dim_k <= LATENT_HOPPER_ROW_SPLIT_MAX_WIDTH and rows > 64
    programs = shape.batch * spec.num_kv_heads * -(-rows // LatentHopperTile(row_split).block_m)
    splits = default_num_splits(programs, shape.capacity, LATENT_HOPPER_BLOCK_N, device_multiprocessors(device),
                                resident=1)
    return LatentHopperConfig(splits, row_split)


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
                         config: LatentHopperConfig, kv_range: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    batch, query_len, _, _ = q.shape
    tile = config.tile_for(shape.page_size)
    module = latent_hopper_module(spec, tile)
    buffers = SplitBuffers.allocate(q, spec.head_dim_v, config.num_splits)
    keys = resolve_key_bounds(attn_mask, kv_range, cache_seqlens, batch, q.shape[2], query_len, shape.capacity,
                              causal, q.device)
    k_desc = _tma_descriptor(k_cache, spec.num_kv_heads * spec.head_dim_k, spec.head_dim_k, tile.copy_rows)
    k_rope_desc = _tma_descriptor(k_rope_cache, spec.rope_dim, rope_tile_width(spec.rope_dim), tile.copy_rows)
    rows = spec.group_size * query_len
    grid = (spec.num_kv_heads * -(-rows // tile.block_m), batch, config.num_splits)
    args = (
        q, q_rope, k_desc, k_rope_desc, keys.lengths, keys.kv_begin, keys.kv_end, keys.mask,
        keys.lengths if page_table is None else page_table,
        buffers.split_out, buffers.split_lse,
        *q.stride()[:3],
        *q_rope.stride()[:3],
        0 if page_table is None else page_table.stride(0),
        0 if page_table is not None else k_cache.shape[1],  # rows per sequence of a contiguous cache
        *keys.mask_strides,
        *buffers.out_strides,
        *buffers.lse_strides,
        softmax_scale * LOG2_E,
        config.num_splits,
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
    )
    # Gluon places its own pipeline: num_stages is the JIT's default and changes nothing.
    launch(module.latent_decode_hopper_kernel, grid, args, constexprs, num_warps=NUM_WARPS, num_stages=3)
    # The combine kernel is the portable module's (any of its template knobs renders the same one).
    buffers.combine(decode_kernel_module(spec, 64, True, 1).combine_splits_kernel)
    return buffers.out, buffers.lse
