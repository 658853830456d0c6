"""The LSE combine of split-KV partial outputs, as a Triton kernel (launched by combine.py)."""
import triton
import triton.language as tl

from .softmax import finite_row_max


@triton.jit
def combine_splits_kernel(
    PART_OUT, PART_LSE, OUT, LSE,
    num_splits,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    SPLITS_POW2: tl.constexpr,
):
    # Merge the per-split partial outputs of one (sequence, token, head) row by their log-sum-exp.
    # PART_OUT [rows, num_splits, Dv] fp32, PART_LSE [rows, num_splits], OUT [rows, Dv], LSE [rows].
    row = tl.program_id(0).to(tl.int64)
    dim_block = tl.program_id(1)
    splits = tl.arange(0, SPLITS_POW2)
    split_valid = splits < num_splits
    part_lse = tl.load(PART_LSE + row * num_splits + splits, mask=split_valid, other=float("-inf"))
    lse_max = tl.max(part_lse, axis=0)
    lse_ref = finite_row_max(lse_max)
    weights = tl.exp(part_lse - lse_ref)  # 0 for empty splits
    total = tl.sum(weights, axis=0)
    dims = dim_block * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dim_valid = dims < HEAD_DIM_V
    part = tl.load(
        PART_OUT + (row * num_splits + splits[:, None]) * HEAD_DIM_V + dims[None, :],
        mask=split_valid[:, None] & dim_valid[None, :],
        other=0.0,
    )
    scale = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)
    out = tl.sum(part * (weights * scale)[:, None], axis=0)
    tl.store(OUT + row * HEAD_DIM_V + dims, out.to(OUT.dtype.element_ty), mask=dim_valid)
    if dim_block == 0:
        tl.store(LSE + row, tl.where(total > 0.0, lse_ref + tl.log(tl.where(total > 0.0, total, 1.0)), float("-inf")))
