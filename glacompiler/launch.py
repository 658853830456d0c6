"""Launch the generated split-KV kernel and the LSE combine kernel. No host-device sync: everything here
depends on shapes, never on tensor values."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
from torch import Tensor

from .codegen import decode_kernel_module
from .config import KernelConfig, next_power_of_two
from .kernel_launch import launch
from .spec import AttentionSpec
from .validation import ProblemShape

LOG2_E = 1.4426950408889634
LOGGER = logging.getLogger("glacompiler")
COMBINE_BLOCK_DV = 64

# Pipeline depth that fits, per (kernel module, config, launch specialisation). A config is tuned without a
# mask; the per-row mask tile and its cross-row reduction take shared memory some wide configs (MLA's 512-wide
# accumulator) lack, so such a launch steps down to fewer stages once and remembers it.
_FITTING_STAGES: dict = {}


def _launch_fitting(kernel, grid, args: tuple, constexprs: dict, config: KernelConfig, module_name: str):
    from triton.runtime.errors import OutOfResources  # late: the interpreter must be chosen before triton loads

    key = (module_name, config, tuple(constexprs.items()))  # the launcher builds constexprs in one fixed order
    stages = _FITTING_STAGES.get(key, config.num_stages)
    while True:
        try:
            compiled = launch(kernel, grid, args, constexprs, config.num_warps, stages)
        except OutOfResources as error:
            if stages == 1:
                raise
            LOGGER.warning("%s: %s does not fit with %s at num_stages=%d (%s); trying %d stages", module_name,
                           config, constexprs, stages, error, stages - 1)
            stages -= 1
            continue
        _FITTING_STAGES[key] = stages
        return compiled


MASK_RANGE_BLOCK_N = 1024


@dataclasses.dataclass
class SplitBuffers:
    """The op's outputs, and where a split-KV kernel writes: straight into them with one split, else into
    fp32 partial outputs and LSEs that the combine kernel merges (split stride 0 when there is one)."""

    out: Tensor  # [B, Lq, Hq, Dv]
    lse: Tensor  # [B, Lq, Hq] float32
    split_out: Tensor
    split_lse: Tensor
    out_strides: tuple  # (b, t, h, split) strides of split_out
    lse_strides: tuple  # (b, t, h, split) strides of split_lse
    num_splits: int

    @classmethod
    def allocate(cls, q: Tensor, head_dim_v: int, num_splits: int) -> "SplitBuffers":
        batch, query_len, num_q_heads, _ = q.shape
        out = torch.empty((batch, query_len, num_q_heads, head_dim_v), dtype=q.dtype, device=q.device)
        lse = torch.empty((batch, query_len, num_q_heads), dtype=torch.float32, device=q.device)
        if num_splits == 1:
            return cls(out, lse, out, lse, (*out.stride()[:3], 0), (*lse.stride(), 0), 1)
        split_out = torch.empty((batch, query_len, num_q_heads, num_splits, head_dim_v), dtype=torch.float32,
                                device=q.device)
        split_lse = torch.empty((batch, query_len, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
        return cls(out, lse, split_out, split_lse, split_out.stride()[:4], split_lse.stride(), num_splits)

    def combine(self, combine_kernel) -> None:
        """Merge the splits by LSE into out and lse (nothing to do with one split)."""
        if self.num_splits == 1:
            return
        rows = self.out.shape[0] * self.out.shape[1] * self.out.shape[2]
        head_dim_v = self.out.shape[3]
        launch(combine_kernel, (rows, -(-head_dim_v // COMBINE_BLOCK_DV)),
               (self.split_out, self.split_lse, self.out, self.lse, self.num_splits),
               dict(HEAD_DIM_V=head_dim_v, BLOCK_DV=COMBINE_BLOCK_DV, SPLITS_POW2=next_power_of_two(self.num_splits)),
               num_warps=4, num_stages=3)


def mask_as_kernel_operand(attn_mask: Tensor) -> Tensor:
    """The mask as 4-D [B or 1, Hq or 1, Lq or 1, S], bool viewed as uint8 (what the kernels load)."""
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask.view(torch.uint8) if attn_mask.dtype == torch.bool else attn_mask


def mask_key_range(mask: Tensor, batch: int, capacity: int, mask_is_bool: bool) -> Tensor:
    """[2, batch] int32: per sequence, the first and one-past-last key that any (head, token) row of the mask
    (a kernel operand, see mask_as_kernel_operand) may attend to, reduced on the device in one launch. The
    attention kernel visits only key blocks in that range."""
    from .kernels.mask_range import mask_key_range_kernel  # late: the interpreter must be chosen before triton loads

    key_range = torch.empty((2, batch), dtype=torch.int32, device=mask.device)
    mask = mask.expand(batch, -1, -1, capacity)  # broadcast batch and key dims get stride 0
    launch(mask_key_range_kernel, (batch,),
           (mask, key_range, mask.shape[1], mask.shape[2], capacity, batch, *mask.stride()),
           dict(MASK_IS_BOOL=mask_is_bool, BLOCK_N=min(MASK_RANGE_BLOCK_N, max(16, next_power_of_two(capacity)))),
           num_warps=4, num_stages=3)
    return key_range


@dataclasses.dataclass
class KeyBounds:
    """What the kernels take about which keys a row sees. Without a mask, the lengths stand in for mask and
    range (HAS_MASK is off, so the kernels never read them) and the strides are 0."""

    lengths: Tensor  # [B] int32
    mask: Tensor  # the mask as a kernel operand (mask_as_kernel_operand)
    kv_begin: Tensor  # [B] first key the mask allows
    kv_end: Tensor  # [B] one past its last
    mask_strides: tuple  # (batch, head, token, key)
    mask_per_row: bool  # the mask differs between packed (head, token) rows


def resolve_key_bounds(attn_mask: Optional[Tensor], kv_range: Optional[Tensor], cache_seqlens: Optional[Tensor],
                       batch: int, num_q_heads: int, query_len: int, capacity: int, causal: bool,
                       device) -> KeyBounds:
    """The key bounds of a call, as the kernels take them. With a mask: the mask as a kernel operand, its
    strides, and its key range (kv_range when the caller has it, one per graph under backend="gla"; else
    reduced here), and, when no lengths are given, the range's end as the lengths (no key past it is visited
    anyway; causal Lq > 1 aligns to the capacity instead). Without a mask, the lengths (the capacity when none
    are given)."""
    if attn_mask is not None:
        mask = mask_as_kernel_operand(attn_mask)
        if kv_range is None:
            kv_range = mask_key_range(mask, batch, capacity, attn_mask.dtype == torch.bool)
        if cache_seqlens is None and not (causal and query_len > 1):
            cache_seqlens = kv_range[1]
    if cache_seqlens is None:
        cache_seqlens = torch.full((batch,), capacity, dtype=torch.int32, device=device)
    if attn_mask is None:
        return KeyBounds(cache_seqlens, cache_seqlens, cache_seqlens, cache_seqlens, (0, 0, 0, 0), False)
    strides = mask.expand(batch, num_q_heads, query_len, capacity).stride()  # broadcast dims get stride 0
    per_row = (num_q_heads > 1 and strides[1] != 0) or (query_len > 1 and strides[2] != 0)
    return KeyBounds(cache_seqlens, mask, kv_range[0], kv_range[1], strides, per_row)


def mask_key_range_reference(mask: Tensor, batch: int, capacity: int, mask_is_bool: bool) -> Tensor:
    """mask_key_range in PyTorch ops (the op's CPU path)."""
    attend = mask != 0 if mask_is_bool else mask != float("-inf")
    any_row = attend.expand(batch, -1, -1, capacity).any(dim=2).any(dim=1)
    positions = torch.arange(capacity, dtype=torch.int32, device=mask.device)
    first = torch.where(any_row, positions, capacity).amin(dim=-1)
    last = torch.where(any_row, positions + 1, 0).amax(dim=-1)
    return torch.stack([first, last]).to(torch.int32)


def launch_decode_attention(
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
    spec: AttentionSpec,
    shape: ProblemShape,
    config: KernelConfig,
    kv_range: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    batch, query_len, num_q_heads, _ = q.shape
    head_dim_v = spec.head_dim_v
    group = spec.group_size
    num_splits = config.num_splits
    module = decode_kernel_module(spec, config.block_d, config.preload_q, config.dv_split)

    buffers = SplitBuffers.allocate(q, head_dim_v, num_splits)

    values = k_cache if v_cache is None else v_cache
    q_rope_arg = q if q_rope is None else q_rope
    k_rope_arg = k_cache if k_rope_cache is None else k_rope_cache
    rope_strides = (0, 0) if k_rope_cache is None else k_rope_cache.stride()[:2]
    page_stride = 0 if page_table is None else page_table.stride(0)
    keys = resolve_key_bounds(attn_mask, kv_range, cache_seqlens, batch, num_q_heads, query_len, shape.capacity,
                              causal, q.device)
    page_arg = keys.lengths if page_table is None else page_table  # a placeholder when contiguous

    rows = group * query_len
    grid = (spec.num_kv_heads * -(-rows // config.block_m) * config.dv_split, batch, num_splits)
    args = (
        q, k_cache, values, q_rope_arg, k_rope_arg, keys.lengths, keys.kv_begin, keys.kv_end, page_arg, keys.mask,
        buffers.split_out, buffers.split_lse,
        *q.stride()[:3],
        *k_cache.stride()[:3],
        *values.stride()[:3],
        *q_rope_arg.stride()[:3],
        *rope_strides,
        page_stride,
        *keys.mask_strides,
        *buffers.out_strides,
        *buffers.lse_strides,
        softmax_scale * LOG2_E,
        num_splits,
    )
    constexprs = dict(
        G=group,
        LQ=query_len,
        PAGE_SIZE=max(shape.page_size, 1),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        HAS_MASK=attn_mask is not None,
        MASK_IS_BOOL=attn_mask is not None and attn_mask.dtype == torch.bool,
        MASK_PER_ROW=keys.mask_per_row,
        # With one query token every key below the length is visible: causality changes nothing.
        CAUSAL=causal and query_len > 1,
    )
    compiled = _launch_fitting(module.decode_attention_split_kernel, grid, args, constexprs, config, module.__name__)
    if LOGGER.isEnabledFor(logging.DEBUG):
        # Registers, spills and shared memory of the compiled kernel: the first things to read when a config is slow.
        LOGGER.debug("%s %s: regs %s, spills %s, shared %s", spec.key(), config, getattr(compiled, "n_regs", "?"),
                     getattr(compiled, "n_spills", "?"), getattr(getattr(compiled, "metadata", None), "shared", "?"))
    buffers.combine(module.combine_splits_kernel)
    return buffers.out, buffers.lse
