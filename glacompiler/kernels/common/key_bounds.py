"""Which keys each row of a decode call may see, in the form every family's kernel takes: the lengths, the
mask as a kernel operand with its strides, and the mask's key range. No host-device sync."""
from __future__ import annotations

from operator import itemgetter
from typing import Optional

import torch
from torch import Tensor

from ...memo import BoundedMemo
from .mask_range import MaskKeyRangeLaunch, mask_as_kernel_operand
from .triton_launch import tracing_launches


# The rows of a key range [3, B] (mask_key_range): first key, end, whether the mask is dense.
_RANGE_ROWS = (itemgetter(0), itemgetter(1), itemgetter(2))

# (batch, capacity, device) -> [B] int32 tensor of the capacity: the lengths of a call that gives none, made once
# (read-only: the kernels only read lengths).
_capacity_lengths = BoundedMemo(256)


def capacity_lengths(batch: int, capacity: int, device) -> Tensor:
    """A [batch] int32 tensor filled with `capacity`, shared by every call with this batch, capacity and device.
    Not remembered when made during CUDA-graph capture: the fill would then run only on replay, and the memory
    belongs to the graph's pool; nor when traced into a graph (the tensor is then a graph node's value)."""
    if tracing_launches():  # a node of the graph being traced (a fill Inductor fuses or runs once a step)
        return torch.full((batch,), capacity, dtype=torch.int32, device=device)
    key = (batch, capacity, device)
    lengths = _capacity_lengths.get(key)
    if lengths is None:
        lengths = torch.full((batch,), capacity, dtype=torch.int32, device=device)
        if not (torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _capacity_lengths.remember(key, lengths)
    return lengths


class KeyBoundsPlan:
    """The key bounds of calls with one metadata, as the kernels take them: what the metadata (shapes, strides,
    dtypes, flags) fixes is worked out once, `resolve` takes a call's tensors. With a mask: the mask as a kernel
    operand, its strides, and its key range (kv_range when the caller has it, one per graph under
    backend="gla"; else reduced per call), and, when no lengths are given, the range's end as the lengths (no
    key past it is visited anyway; causal Lq > 1, ALiBi and a window, which place the queries by the lengths,
    align to the capacity instead: positions_matter). Without a mask, the lengths (the capacity when none are
    given); the lengths then stand in for mask and range (HAS_MASK is off: never read) and the strides are 0."""

    __slots__ = ("has_mask", "mask_is_bool", "reduce_range", "lengths_source", "mask_strides", "mask_per_row", "batch",
                 "capacity", "device")

    def __init__(self, attn_mask: Optional[Tensor], kv_range: Optional[Tensor], cache_seqlens: Optional[Tensor],
                 batch: int, num_q_heads: int, query_len: int, capacity: int, causal: bool, device,
                 positions_matter: bool = False):
        self.batch, self.capacity, self.device = batch, capacity, device
        self.has_mask = attn_mask is not None
        self.mask_is_bool = self.has_mask and attn_mask.dtype == torch.bool
        self.reduce_range = None
        if cache_seqlens is not None:
            self.lengths_source = "given"
        elif self.has_mask and not (causal and query_len > 1) and not positions_matter:
            self.lengths_source = "range end"
        else:
            self.lengths_source = "capacity"
        if not self.has_mask:
            self.mask_strides, self.mask_per_row = (0, 0, 0, 0), False
            return
        mask = mask_as_kernel_operand(attn_mask)
        if kv_range is None:
            self.reduce_range = MaskKeyRangeLaunch(mask, batch, capacity, self.mask_is_bool)
        strides = mask.expand(batch, num_q_heads, query_len, capacity).stride()  # broadcast dims get stride 0
        self.mask_strides = strides
        self.mask_per_row = (num_q_heads > 1 and strides[1] != 0) or (query_len > 1 and strides[2] != 0)

    def jit_forms(self, mask: int, lengths: int, kv_begin: int, kv_end: int, mask_dense: Optional[int] = None) -> dict:
        """PreparedLaunch's jit_forms for a kernel taking resolve's results at these argument positions: the mask's
        kernel operand, and the key range's rows where resolve passes the whole range (each a view at a fixed
        offset: the binary takes the range's address plus that offset, with no view made per call)."""
        if not self.has_mask:
            return {}
        forms = {mask: mask_as_kernel_operand, kv_begin: _RANGE_ROWS[0], kv_end: _RANGE_ROWS[1]}
        if mask_dense is not None:
            forms[mask_dense] = _RANGE_ROWS[2]
        if self.lengths_source == "range end":
            forms[lengths] = _RANGE_ROWS[1]
        return forms

    @property
    def mask_flags(self) -> dict:
        """The kernels' constexprs about the mask: HAS_MASK, MASK_IS_BOOL, MASK_PER_ROW."""
        return dict(HAS_MASK=self.has_mask, MASK_IS_BOOL=self.mask_is_bool, MASK_PER_ROW=self.mask_per_row)

    def resolve(self, attn_mask: Optional[Tensor], kv_range: Optional[Tensor],
                cache_seqlens: Optional[Tensor]) -> tuple:
        """(lengths, mask, kv_begin, kv_end, mask_dense) of one call with the plan's metadata, as the launch takes
        them (without a mask, the lengths stand in for all of them: never read). The mask is the caller's, and
        kv_begin, kv_end, mask_dense (and the lengths where they are the range's end) are the whole range
        [3, B] of mask_key_range: the launch's JIT forms (jit_forms) are the mask's kernel operand and the
        range's rows; the binary reads addresses, the same. Traced into a graph, where no JIT form applies, the
        rows themselves."""
        if not self.has_mask:
            lengths = cache_seqlens if cache_seqlens is not None else capacity_lengths(self.batch, self.capacity,
                                                                                       self.device)
            return lengths, lengths, lengths, lengths, lengths
        if self.reduce_range is not None:
            kv_range = self.reduce_range(attn_mask)
        if tracing_launches():
            kv_begin, kv_end, mask_dense = kv_range.unbind(0)
        else:
            kv_begin = kv_end = mask_dense = kv_range
        source = self.lengths_source
        lengths = (cache_seqlens if source == "given" else kv_end if source == "range end"
                   else capacity_lengths(self.batch, self.capacity, self.device))
        return lengths, attn_mask, kv_begin, kv_end, mask_dense
