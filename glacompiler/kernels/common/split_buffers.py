"""Where a split-KV kernel writes: straight into the op's outputs with one split, else into fp32 partial
outputs and LSEs that the combine kernel merges."""
from __future__ import annotations

import torch
from torch import Tensor

from .combine import combine_launch
from .split_workspace import held_views
from .triton_launch import tracing_launches


class SplitBuffers:
    """The op's outputs and the split kernel's targets for calls of one shape, worked out once (a prepared op
    call holds one): `allocate_for_call` gives a call's tensors, `combine` merges its splits."""

    __slots__ = ("out_shape", "lse_shape", "split_out_shape", "split_lse_shape", "split_shapes", "dropped_lse_shapes",
                 "num_splits", "out_strides", "lse_strides", "merged_strides", "combine_launch")

    def __init__(self, q: Tensor, head_dim_v: int, num_splits: int, dependent_combine: bool = False):
        """dependent_combine: the combine launches dependent on the split kernel, which signals it at its start
        (dependent_launch.py); only a split kernel that signals may take it."""
        batch, query_len, num_q_heads, _ = q.shape
        self.num_splits = num_splits
        self.out_shape = (batch, query_len, num_q_heads, head_dim_v)
        self.lse_shape = (batch, query_len, num_q_heads)
        self.split_out_shape = (batch, query_len, num_q_heads, num_splits, head_dim_v)
        self.split_lse_shape = (batch, query_len, num_q_heads, num_splits)
        # What a call holds in its stream's workspace: the partials, and with them the LSE where its caller drops it.
        self.split_shapes = (self.split_out_shape, self.split_lse_shape)
        self.dropped_lse_shapes = (*self.split_shapes, self.lse_shape) if num_splits > 1 else (self.lse_shape,)
        self.combine_launch = None
        # The op's outputs (contiguous), (b, t, h) strides of out then of lse: where a kernel merging its own
        # splits writes.
        self.merged_strides = (query_len * num_q_heads * head_dim_v, num_q_heads * head_dim_v, head_dim_v,
                               query_len * num_q_heads, num_q_heads, 1)
        if num_splits == 1:  # the kernel writes the outputs (contiguous), split stride 0
            self.out_strides = (*self.merged_strides[:3], 0)
            self.lse_strides = (*self.merged_strides[3:], 0)
            return
        split_out, _, _, lse = self.allocate(q)
        self.out_strides = split_out.stride()[:4]
        self.lse_strides = (query_len * num_q_heads * num_splits, num_q_heads * num_splits, num_splits, 1)
        self.combine_launch = combine_launch(split_out, lse, dependent_combine)

    def allocate(self, q: Tensor) -> tuple:
        """(split_out, split_lse, out, lse), all four allocated (a compiled graph's buffers): the first two are the
        outputs with one split."""
        out, lse = self._outputs(q)
        if self.num_splits == 1:
            return out, lse, out, lse
        return (q.new_empty(self.split_out_shape, dtype=torch.float32),
                q.new_empty(self.split_lse_shape, dtype=torch.float32), out, lse)

    def allocate_for_call(self, q: Tensor, hold: bool, keep_lse: bool = True) -> tuple:
        """`allocate`'s four for a call that combines its splits before it returns (an op call). With hold (the eager
        wrapper's direct path alone: split_workspace.py says why), a call on the current CUDA device that is not
        being captured takes what it does not return from its thread's workspace for its stream: its partials, and
        its LSE unless keep_lse (the wrapper without return_lse drops it). Any other call allocates all four."""
        # (torch.cuda's C calls, without their Python frames: this runs on every call)
        if (not hold or (keep_lse and self.num_splits == 1) or not q.is_cuda or tracing_launches()
                or torch._C._cuda_isCurrentStreamCapturing()):
            return self.allocate(q)
        device = q.get_device()
        if device != torch._C._cuda_getDevice():  # (the kernels launch on the current device's stream)
            return self.allocate(q)
        stream_key = (device, torch._C._cuda_getCurrentRawStream(device))
        if keep_lse:
            split_out, split_lse = held_views(q, stream_key, self.split_shapes)
            return (split_out, split_lse, *self._outputs(q))
        out = q.new_empty(self.out_shape)
        if self.num_splits == 1:
            (lse,) = held_views(q, stream_key, self.dropped_lse_shapes)
            return out, lse, out, lse
        split_out, split_lse, lse = held_views(q, stream_key, self.dropped_lse_shapes)
        return split_out, split_lse, out, lse

    def _outputs(self, q: Tensor) -> tuple:
        return q.new_empty(self.out_shape), q.new_empty(self.lse_shape, dtype=torch.float32)

    @staticmethod
    def split_count_of(split_out: Tensor) -> int:
        """The split count of a split_out as `allocate` makes it: [B, Lq, Hq, splits, Dv] partial outputs, or the
        op's [B, Lq, Hq, Dv] output with one split."""
        return split_out.shape[3] if split_out.dim() == 5 else 1

    def are_targets(self, q: Tensor, split_out: Tensor, split_lse: Tensor) -> bool:
        """Whether tensors given for `allocate`'s first two (the kernel's targets) have their shapes, contiguous
        strides and dtypes: the plan's strides are baked in."""
        expected = ((self.out_shape, q.dtype, self.lse_shape) if self.num_splits == 1
                    else (self.split_out_shape, torch.float32, self.split_lse_shape))
        out_shape, out_dtype, lse_shape = expected
        return (tuple(split_out.shape) == out_shape and split_out.dtype == out_dtype and split_out.is_contiguous()
                and tuple(split_lse.shape) == lse_shape and split_lse.dtype == torch.float32
                and split_lse.is_contiguous())

    def combine(self, split_out: Tensor, split_lse: Tensor, out: Tensor, lse: Tensor) -> None:
        """Merge the splits by LSE into out and lse (nothing to do with one split)."""
        if self.combine_launch is not None:
            self.combine_launch((split_out, split_lse, out, lse, self.num_splits, lse.numel()))
