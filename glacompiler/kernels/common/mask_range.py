"""The key range a mask leaves open per sequence: [first, one past last] key that any (head, token) row may
attend to. The attention kernels visit only key blocks inside it, so a static cache's unfilled tail (or a
sliding window's past) is never read. One small kernel on the device, its PyTorch reference beside it."""
from __future__ import annotations

import torch
from torch import Tensor

from ...memo import BoundedMemo
from ...reference import mask_attended_keys
from .tiles import next_power_of_two
from .triton_launch import PreparedLaunch

MASK_RANGE_BLOCK_N = 1024


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
            dict(MASK_IS_BOOL=mask_is_bool, BLOCK_N=min(MASK_RANGE_BLOCK_N, max(16, next_power_of_two(capacity)))),
            num_warps=4, num_stages=3)

    def __call__(self, mask: Tensor) -> Tensor:
        key_range = torch.empty((2, self.batch), dtype=torch.int32, device=self.device)
        self.launch((mask, key_range, *self.tail))  # (the kernel reads only the pointer of the expanded view)
        return key_range


# (mask metadata, batch, capacity) -> MaskKeyRangeLaunch, for the op glacompiler::mask_key_range (the backend's
# one per step).
_prepared_ranges = BoundedMemo(256)


def mask_key_range(mask: Tensor, batch: int, capacity: int, mask_is_bool: bool) -> Tensor:
    """[2, batch] int32: per sequence, the first and one-past-last key that any row of the mask (a kernel
    operand, see key_bounds.mask_as_kernel_operand) may attend to, reduced in one launch. A sequence no row
    may attend to gets [capacity, 0)."""
    key = (mask.shape, mask.stride(), mask.dtype, mask.device, mask.data_ptr() % 16, batch, capacity, mask_is_bool)
    prepared = _prepared_ranges.get(key)
    if prepared is None:
        prepared = _prepared_ranges.remember(key, MaskKeyRangeLaunch(mask, batch, capacity, mask_is_bool))
    return prepared(mask)


def mask_key_range_reference(mask: Tensor, batch: int, capacity: int, mask_is_bool: bool) -> Tensor:
    """mask_key_range in PyTorch ops (the op's CPU path, and the kernel's oracle)."""
    any_row = mask_attended_keys(mask.view(torch.bool) if mask_is_bool else mask, batch, capacity)
    positions = torch.arange(capacity, dtype=torch.int32, device=mask.device)
    first = torch.where(any_row, positions, capacity).amin(dim=-1)
    last = torch.where(any_row, positions + 1, 0).amax(dim=-1)
    return torch.stack([first, last]).to(torch.int32)
