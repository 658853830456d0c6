"""The key range a mask leaves open per sequence: [first, one past last] key that any (head, token) row may
attend to, and whether the mask is dense in it (every row allows every key of the range, adding 0). The
attention kernels visit only key blocks inside the range, so a static cache's unfilled tail (or a sliding
window's past) is never read, and they do not read a dense mask at all (its loads would hold up the key loads
that depend on them). One small kernel on the device, its PyTorch reference beside it.

Additive mask entries at or below MASKED_BIAS (-65504, fp16's lowest value; models fill masked keys with their
dtype's lowest, -65504 in fp16, about -3.4e38 in bf16/fp32, or bf16's rounding of -65504, -65536) leave their key
out of the range like -inf, so a static cache's unfilled tail masked that way is not read either. Such a key's
weight in the kernels' fp32 softmax is exp(its scaled score + bias - the row's max), which is exactly 0 (below
fp32's least subnormal) unless its scaled score exceeds the best visible key's (score + bias) by more than about
65,400: a row where a masked key would win the softmax, which eager attention gives and the range does not. A row
whose entries are all such fills (or -inf) keeps the whole capacity for its sequence, read as before."""
from __future__ import annotations

import torch
from torch import Tensor

from ...memo import BoundedMemo
from .launch_device import other_cuda_device
from .tiles import next_power_of_two
from .triton_launch import PreparedLaunch

MASK_RANGE_BLOCK_N = 1024
KEY_RANGE_ROWS = 3  # first key, one past the last, dense flag
MASKED_BIAS = -65504.0  # additive mask entries at or below it are out of the range (see the module docstring)


def mask_as_kernel_operand(attn_mask: Tensor) -> Tensor:
    """The mask as 4-D [B or 1, Hq or 1, Lq or 1, S], bool viewed as uint8 (what the kernels load)."""
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask.view(torch.uint8) if attn_mask.dtype == torch.bool else attn_mask


class MaskKeyRangeLaunch:
    """mask_key_range for masks of one shape, strides, dtype and batch/capacity, its launch prepared once (a
    prepared op call holds one: the per-call host time is an allocation and a direct launch)."""

    __slots__ = ("batch", "device", "tail", "launch")

    def __init__(self, mask: Tensor, batch: int, capacity: int, mask_is_bool: bool):
        from .mask_range_kernel import mask_key_range_kernel  # late: the interpreter must be chosen before triton loads

        expanded = mask.expand(batch, -1, -1, capacity)  # broadcast batch and key dims get stride 0
        self.batch, self.device = batch, mask.device
        self.tail = (expanded.shape[1], expanded.shape[2], capacity, batch, *expanded.stride())
        self.launch = PreparedLaunch(
            mask_key_range_kernel, (batch,),
            dict(MASK_IS_BOOL=mask_is_bool, MASKED_BIAS=MASKED_BIAS,
                 BLOCK_N=min(MASK_RANGE_BLOCK_N, max(16, next_power_of_two(capacity)))),
            num_warps=4, num_stages=3, jit_forms={0: mask_as_kernel_operand})

    def __call__(self, mask: Tensor) -> Tensor:
        """The key range of `mask` (the caller's mask, or its kernel operand: the same address)."""
        key_range = torch.empty((KEY_RANGE_ROWS, self.batch), dtype=torch.int32, device=self.device)
        self.launch((mask, key_range, *self.tail))  # (the kernel reads only the pointer of the expanded view)
        return key_range


# (mask metadata, batch, capacity) -> MaskKeyRangeLaunch, for the op glacompiler::mask_key_range (the backend's
# one per step).
_prepared_ranges = BoundedMemo(256)


def mask_key_range(mask: Tensor, batch: int, capacity: int, mask_is_bool: bool) -> Tensor:
    """[3, batch] int32: per sequence, the first and one-past-last key that any row of the mask (a kernel
    operand, see mask_as_kernel_operand) may attend to, and 1 where the mask is dense in that range
    (every row allows every key of it; an additive mask adds 0 to each), else 0; reduced in one launch. A
    sequence no row may attend to gets [capacity, 0) and 0. Additive entries at or below MASKED_BIAS count as -inf
    here, but in rows of such entries only (see the module docstring)."""
    device = other_cuda_device(mask)
    if device >= 0:  # (launch_device.py)
        with torch.cuda.device(device):
            return mask_key_range(mask, batch, capacity, mask_is_bool)
    key = (mask.shape, mask.stride(), mask.dtype, mask.device, mask.data_ptr() % 16, batch, capacity, mask_is_bool)
    prepared = _prepared_ranges.get(key)
    if prepared is None:
        prepared = _prepared_ranges.remember(key, MaskKeyRangeLaunch(mask, batch, capacity, mask_is_bool))
    return prepared(mask)


def mask_key_range_reference(mask: Tensor, batch: int, capacity: int, mask_is_bool: bool) -> Tensor:
    """mask_key_range in PyTorch ops (the op's CPU path, and the kernel's oracle)."""
    rows = mask.expand(batch, -1, -1, capacity).reshape(batch, -1, capacity)  # [B, rows, S]
    if mask_is_bool:
        allows, only_masked_bias = rows.view(torch.bool), None
    else:
        not_minus_inf = rows != float("-inf")
        masked_bias = not_minus_inf & (rows <= MASKED_BIAS)
        allows = not_minus_inf & ~masked_bias
        only_masked_bias = masked_bias.any(dim=2) & ~allows.any(dim=2)  # [B, rows]
    any_row = allows.any(dim=1)
    positions = torch.arange(capacity, dtype=torch.int32, device=mask.device)
    first = torch.where(any_row, positions, capacity).amin(dim=-1)
    last = torch.where(any_row, positions + 1, 0).amax(dim=-1)
    adds_zero = allows if mask_is_bool else allows & (rows == 0)
    in_range = (positions >= first[:, None]) & (positions < last[:, None])  # [B, S]
    dense = (last > first) & (adds_zero | ~in_range[:, None, :]).all(dim=2).all(dim=1)
    if only_masked_bias is not None:  # a row of masked fills only: its sequence keeps the whole capacity
        keeps_all = only_masked_bias.any(dim=1)
        first = torch.where(keeps_all, 0, first)
        last = torch.where(keeps_all, capacity, last)
        dense = dense & ~keeps_all
    return torch.stack([first, last, dense.to(torch.int32)]).to(torch.int32)
