"""The key range a mask leaves open, per sequence, and whether the mask is dense in it, in one small kernel
(instead of a chain of ATen reductions, each its own launch on the host's hot path). Launched by mask_range.py,
which holds its reference."""
import triton
import triton.language as tl

from .softmax import mask_allows


@triton.jit
def mask_key_range_kernel(
    MASK, RANGE,
    mask_heads, mask_tokens, capacity, batch,
    stride_mb, stride_mh, stride_mt, stride_mn,
    MASK_IS_BOOL: tl.constexpr,
    MASKED_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program per sequence: the first and one-past-last key any (head, token) row of the mask may attend
    # to, stored at RANGE[0, seq] and RANGE[1, seq]. A sequence no row may attend to gets [capacity, 0).
    # RANGE[2, seq] is 1 where the mask is dense in that range: every row allows every key of it (and an additive
    # mask adds 0 to each), so the attention kernels may treat it as the range alone and not read it.
    # An additive mask's entries at or below MASKED_BIAS (the fills models write for a masked key) leave the key out
    # of the range like -inf, except in a row that has no other key (that row's softmax is over those entries:
    # the sequence then keeps the whole capacity, read as before). mask_range.py says why that is exact.
    seq = tl.program_id(0)
    mask_seq = MASK + seq.to(tl.int64) * stride_mb
    first = tl.zeros([], dtype=tl.int32) + capacity
    last = tl.zeros([], dtype=tl.int32)
    allowed = tl.zeros([], dtype=tl.int64)  # entries the mask allows, over all rows
    adding = tl.zeros([], dtype=tl.int64)  # allowed entries of an additive mask that add something
    only_masked_bias = tl.zeros([], dtype=tl.int32)  # rows of entries at or below MASKED_BIAS (some finite) only
    for row in range(mask_heads * mask_tokens):
        mask_row = mask_seq + (row // mask_tokens) * stride_mh + (row % mask_tokens) * stride_mt
        row_allowed = tl.zeros([], dtype=tl.int64)
        row_masked_bias = tl.zeros([], dtype=tl.int64)
        for block_start in range(0, capacity, BLOCK_N):
            keys = block_start + tl.arange(0, BLOCK_N)
            in_range = keys < capacity
            values = tl.load(mask_row + keys * stride_mn, mask=in_range, other=0)
            attend = in_range & mask_allows(values, MASK_IS_BOOL)
            if not MASK_IS_BOOL:
                # (compared in fp32: the Triton interpreter compares bf16 with a constant wrongly)
                masked_bias = attend & (values.to(tl.float32) <= MASKED_BIAS)
                row_masked_bias += tl.sum(masked_bias.to(tl.int64), axis=0)
                attend = attend & ~masked_bias
                adding += tl.sum((attend & (values != 0)).to(tl.int64), axis=0)
            first = tl.minimum(first, tl.min(tl.where(attend, keys, capacity), axis=0))
            last = tl.maximum(last, tl.max(tl.where(attend, keys + 1, 0), axis=0))
            row_allowed += tl.sum(attend.to(tl.int64), axis=0)
        allowed += row_allowed
        only_masked_bias += ((row_allowed == 0) & (row_masked_bias > 0)).to(tl.int32)
    # The allowed entries lie in [first, last): all of it is allowed when they fill it in every row.
    span = (last - first).to(tl.int64)
    dense = (span > 0) & (allowed == span * mask_heads * mask_tokens) & (adding == 0)
    if not MASK_IS_BOOL:
        first = tl.where(only_masked_bias > 0, 0, first)
        last = tl.where(only_masked_bias > 0, capacity, last)
        dense = dense & (only_masked_bias == 0)
    tl.store(RANGE + seq, first)
    tl.store(RANGE + batch + seq, last)
    tl.store(RANGE + 2 * batch + seq, dense.to(tl.int32))
