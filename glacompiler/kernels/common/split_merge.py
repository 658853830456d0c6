"""The split weights of a block of rows, which the combine kernel (combine_kernel.py) and the portable kernel's fused
tail (templates/portable/) merge split-KV partial outputs with. Its own module: the fused kernels' version
(portable/render.py) hashes this file, so a change to the combine kernel alone leaves the tables' fused entries current."""
import triton
import triton.language as tl

from .softmax import finite_row_max


@triton.jit
def merge_scales(part_lse):
    """Split LSEs of a block of rows [rows, splits] (-inf for empty or absent splits) -> per row, (the reference to
    subtract from a split's LSE, the scale of exp(LSE - reference) that makes it the split's weight in the merged
    output, the merged LSE)."""
    lse_ref = finite_row_max(tl.max(part_lse, axis=1))
    total = tl.sum(tl.exp(part_lse - lse_ref[:, None]), axis=1)  # empty splits add 0
    has_mass = total > 0.0
    safe_total = tl.where(has_mass, total, 1.0)
    return lse_ref, tl.where(has_mass, 1.0 / safe_total, 0.0), tl.where(has_mass, lse_ref + tl.log(safe_total),
                                                                        float("-inf"))
