"""Merging split-KV partial outputs by their log-sum-exp: the launch of combine_kernel.py and its reference.

A split that saw no key has lse -inf and weighs 0; a row whose splits all saw nothing gets out 0, lse -inf."""
from __future__ import annotations

import torch
from torch import Tensor

from .tiles import next_power_of_two
from .triton_launch import PreparedLaunch

COMBINE_BLOCK_DV = 64


def combine_launch(split_out: Tensor, lse: Tensor) -> PreparedLaunch:
    """The combine's launch for split buffers of these shapes (args: split_out, split_lse, out, lse, splits)."""
    from .combine_kernel import combine_splits_kernel  # late: the interpreter must be chosen before triton loads

    num_splits, head_dim_v = split_out.shape[-2], split_out.shape[-1]
    return PreparedLaunch(combine_splits_kernel, (lse.numel(), -(-head_dim_v // COMBINE_BLOCK_DV)),
                          dict(HEAD_DIM_V=head_dim_v, BLOCK_DV=COMBINE_BLOCK_DV,
                               SPLITS_POW2=next_power_of_two(num_splits)),
                          num_warps=4, num_stages=3)


def combine_splits(split_out: Tensor, split_lse: Tensor, out: Tensor, lse: Tensor) -> None:
    """split_out [..., splits, Dv] fp32 and split_lse [..., splits] (contiguous) -> out [..., Dv], lse [...]."""
    combine_launch(split_out, lse)((split_out, split_lse, out, lse, split_out.shape[-2]))


def combine_splits_reference(split_out: Tensor, split_lse: Tensor) -> tuple[Tensor, Tensor]:
    """combine_splits in float64 PyTorch: (out [..., Dv], lse [...])."""
    split_out, split_lse = split_out.double(), split_lse.double()
    lse = torch.logsumexp(split_lse, dim=-1)
    weights = torch.exp(split_lse - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    weights = torch.where(torch.isinf(lse)[..., None], 0.0, weights)  # all splits empty: out 0
    out = (split_out * weights[..., None]).sum(dim=-2)
    return out, lse
