"""Merging split-KV partial outputs by their log-sum-exp: the launch of combine_kernel.py and its reference.

A split that saw no key has lse -inf and weighs 0; a row whose splits all saw nothing gets out 0, lse -inf."""
from __future__ import annotations

import torch
from torch import Tensor

from .launch_device import other_cuda_device
from .tiles import next_power_of_two
from .triton_launch import PreparedLaunch

# A program reads about this many partial-output elements (splits x columns x rows): with a few splits, one row's
# 64 columns are a few hundred bytes, too little to cover a program's fixed cost.
COMBINE_PROGRAM_ELEMENTS = 4096
# Columns a program takes at the least (many splits); the programs below which rows are not packed further; the
# most rows a program takes (more would lengthen a program whose rows run one after another, and multiply its code).
COMBINE_MIN_BLOCK_DV = 64
COMBINE_MIN_PROGRAMS = 256
COMBINE_MAX_ROWS = 4
# A row's tile (splits rounded up to a power of two, times the program's columns) below which a program's rows load
# together rather than one after another: a narrow row's loads are too few to cover the round trip each row waits
# for (2048 rows x 3 splits x 128 on an H100: 7.6 -> 2.8 us), while rows of 1024 or more ran 5% slower together
# (4096 x 2 x 512).
COMBINE_ROWS_AT_ONCE_BELOW = 1024


def combine_tiling(rows: int, num_splits: int, head_dim_v: int) -> tuple[int, int]:
    """(rows, columns) a combine program takes: all of a row's columns where the splits are few, and up to
    COMBINE_MAX_ROWS rows where a row is small, down to COMBINE_MIN_PROGRAMS programs."""
    splits_pow2 = next_power_of_two(num_splits)
    block_dv = min(next_power_of_two(head_dim_v), max(COMBINE_MIN_BLOCK_DV, COMBINE_PROGRAM_ELEMENTS // splits_pow2))
    block_rows = max(1, min(COMBINE_MAX_ROWS, COMBINE_PROGRAM_ELEMENTS // (splits_pow2 * block_dv)))
    while block_rows > 1 and -(-rows // block_rows) < COMBINE_MIN_PROGRAMS:
        block_rows //= 2
    return block_rows, block_dv


def rows_at_once(block_rows: int, num_splits: int, block_dv: int) -> bool:
    """Whether a program's rows load as one tile (narrow rows) or one after another (one row, or wide rows)."""
    return block_rows > 1 and next_power_of_two(num_splits) * block_dv < COMBINE_ROWS_AT_ONCE_BELOW


def combine_launch(split_out: Tensor, lse: Tensor, dependent: bool = False) -> PreparedLaunch:
    """The combine's launch for split buffers of these shapes (args: split_out, split_lse, out, lse, splits, rows);
    dependent: launched dependent on the split kernel before it, which signals it (dependent_launch.py)."""
    from .combine_kernel import combine_splits_kernel  # late: the interpreter must be chosen before triton loads

    num_splits, head_dim_v = split_out.shape[-2], split_out.shape[-1]
    block_rows, block_dv = combine_tiling(lse.numel(), num_splits, head_dim_v)
    constexprs = dict(HEAD_DIM_V=head_dim_v, BLOCK_DV=block_dv, SPLITS_POW2=next_power_of_two(num_splits),
                      ROWS=block_rows, ROWS_AT_ONCE=rows_at_once(block_rows, num_splits, block_dv))
    return PreparedLaunch(combine_splits_kernel, (-(-lse.numel() // block_rows), -(-head_dim_v // block_dv)),
                          {**constexprs, "WAIT_FOR_PRIOR_GRID": dependent}, num_warps=4, num_stages=3,
                          launch_options=dict(launch_pdl=True) if dependent else None,
                          # (a graph's launch is not dependent: no wait)
                          traced_form=(combine_splits_kernel, {**constexprs, "WAIT_FOR_PRIOR_GRID": False}))


def combine_splits(split_out: Tensor, split_lse: Tensor, out: Tensor, lse: Tensor) -> None:
    """split_out [..., splits, Dv] fp32 and split_lse [..., splits] (contiguous) -> out [..., Dv], lse [...]."""
    device = other_cuda_device(split_out)
    if device >= 0:  # (launch_device.py)
        with torch.cuda.device(device):
            return combine_splits(split_out, split_lse, out, lse)
    # (after whatever kernel the caller ran last: an ordinary launch, dependent_launch.py says why)
    combine_launch(split_out, lse)((split_out, split_lse, out, lse, split_out.shape[-2], lse.numel()))


def combine_splits_reference(split_out: Tensor, split_lse: Tensor) -> tuple[Tensor, Tensor]:
    """combine_splits in float64 PyTorch: (out [..., Dv], lse [...])."""
    split_out, split_lse = split_out.double(), split_lse.double()
    lse = torch.logsumexp(split_lse, dim=-1)
    weights = torch.exp(split_lse - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    weights = torch.where(torch.isinf(lse)[..., None], 0.0, weights)  # all splits empty: out 0
    out = (split_out * weights[..., None]).sum(dim=-2)
    return out, lse
