"""Where a split-KV kernel writes: straight into the op's outputs with one split, else into fp32 partial
outputs and LSEs that the combine kernel merges."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .combine import combine_splits


@dataclasses.dataclass
class SplitBuffers:
    """The op's outputs and the split kernel's targets (split stride 0 when there is one split)."""

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

    def combine(self) -> None:
        """Merge the splits by LSE into out and lse (nothing to do with one split)."""
        if self.num_splits > 1:
            combine_splits(self.split_out, self.split_lse, self.out, self.lse)
