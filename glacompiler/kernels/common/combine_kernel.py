"""The LSE combine of split-KV partial outputs, as a Triton kernel (launched by combine.py)."""
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from .softmax import finite_row_max
from .split_merge import merge_scales


@triton.jit
def split_weights(part_lse):
    """A row's split LSEs [splits] (-inf for empty or absent splits) -> (each split's weight in the merged output,
    the merged LSE). A row whose splits are all empty gets weights 0 (out 0) and LSE -inf. The one-row form of
    split_merge.merge_scales, kept apart: the row-at-a-time loop through the block helper ran 11-15% slower on an
    H100 (benchmarks/RESULTS.md, the combine's narrow rows)."""
    lse_ref = finite_row_max(tl.max(part_lse, axis=0))
    weights = tl.exp(part_lse - lse_ref)  # 0 for empty splits
    total = tl.sum(weights, axis=0)
    has_mass = total > 0.0
    safe_total = tl.where(has_mass, total, 1.0)
    scale = tl.where(has_mass, 1.0 / safe_total, 0.0)
    return weights * scale, tl.where(has_mass, lse_ref + tl.log(safe_total), float("-inf"))


@triton.jit(do_not_specialize=["num_rows"])  # the batch's row count: one binary for every batch size
def combine_splits_kernel(
    PART_OUT, PART_LSE, OUT, LSE,
    num_splits,
    num_rows,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    SPLITS_POW2: tl.constexpr,
    ROWS: tl.constexpr,  # a power of two
    ROWS_AT_ONCE: tl.constexpr,
    WAIT_FOR_PRIOR_GRID: tl.constexpr,  # launched with PDL (dependent_launch.py): wait before any memory access
):
    # Merge the per-split partial outputs of ROWS (sequence, token, head) rows by their log-sum-exp, BLOCK_DV
    # output columns of each. PART_OUT [rows, num_splits, Dv] fp32, PART_LSE [rows, num_splits], OUT [rows, Dv],
    # LSE [rows]. ROWS_AT_ONCE: the rows load as one [ROWS, splits, columns] tile, all in flight together; else
    # one after another (a row's loads wait for the previous row's stores, which the compiler cannot prove apart:
    # a memory round trip per row, which a wide row's loads cover and a narrow row's do not).
    dim_block = tl.program_id(1)
    first_row = tl.program_id(0).to(tl.int64) * ROWS
    splits = tl.arange(0, SPLITS_POW2)
    dims = dim_block * BLOCK_DV + tl.arange(0, BLOCK_DV)
    if WAIT_FOR_PRIOR_GRID:
        gdc_wait()  # the split kernel's completion and its partials' stores; no load or store comes before it
    if ROWS_AT_ONCE:
        rows = first_row + tl.arange(0, ROWS)
        # A row past the last (the last program's tail) has no split and no column to write.
        row_valid = rows < num_rows
        dim_valid = dims < HEAD_DIM_V
        split_valid = row_valid[:, None] & (splits[None, :] < num_splits)  # [ROWS, splits]
        part_slots = rows[:, None] * num_splits + splits[None, :]
        part_lse = tl.load(PART_LSE + part_slots, mask=split_valid, other=float("-inf"))
        lse_ref, scale, row_lse = merge_scales(part_lse)
        weights = tl.exp(part_lse - lse_ref[:, None]) * scale[:, None]  # 0 for empty or absent splits
        part = tl.load(PART_OUT + part_slots[:, :, None] * HEAD_DIM_V + dims[None, None, :],
                       mask=split_valid[:, :, None] & dim_valid[None, None, :], other=0.0)
        out = tl.sum(part * weights[:, :, None], axis=1)  # [ROWS, columns]
        tl.store(OUT + rows[:, None] * HEAD_DIM_V + dims[None, :], out.to(OUT.dtype.element_ty),
                 mask=row_valid[:, None] & dim_valid[None, :])
        if dim_block == 0:
            tl.store(LSE + rows, row_lse, mask=row_valid)
    else:
        for r in tl.static_range(ROWS):
            row = first_row + r
            in_range = row < num_rows
            split_valid = splits < tl.where(in_range, num_splits, 0)
            row_dim_valid = dims < tl.where(in_range, HEAD_DIM_V, 0)
            part_lse = tl.load(PART_LSE + row * num_splits + splits, mask=split_valid, other=float("-inf"))
            weights, row_lse = split_weights(part_lse)
            part = tl.load(PART_OUT + (row * num_splits + splits[:, None]) * HEAD_DIM_V + dims[None, :],
                           mask=split_valid[:, None] & row_dim_valid[None, :], other=0.0)
            out = tl.sum(part * weights[:, None], axis=0)
            tl.store(OUT + row * HEAD_DIM_V + dims, out.to(OUT.dtype.element_ty), mask=row_dim_valid)
            if dim_block == 0:
                if in_range:
                    tl.store(LSE + row, row_lse)
