"""Triton helpers every decode kernel shares (the portable template, the Hopper latent template, the mask
range and combine kernels): scores live in the log2 domain, a mask is bool (True = attend) or additive.

Plain @triton.jit functions: Triton inlines them, and Gluon kernels call them too (they use only operators
and tl functions that Gluon accepts on its distributed layouts). Their reference is reference.py's math."""
import triton
import triton.language as tl

from . import log2_domain

LOG2_E: tl.constexpr = tl.constexpr(log2_domain.LOG2_E)  # exp(x) = exp2(x * log2(e))
LN_2: tl.constexpr = tl.constexpr(log2_domain.LN_2)  # log(x) = log2(x) * ln(2)


@triton.jit
def mask_allows(mask_values, MASK_IS_BOOL: tl.constexpr):
    """Which mask entries let a query see the key: True for a bool mask, not -inf for an additive one."""
    if MASK_IS_BOOL:
        return mask_values != 0
    else:
        return mask_values != float("-inf")


# The lowest additive mask entry the kernels take as it is. Models fill a masked key with torch.finfo(dtype).min,
# which for float32 and bfloat16 overflows to -inf once scaled to the log2 domain: a row of such fills only would
# then attend to nothing, where eager attention (and the reference) average its values. Clamped here, the fills
# stay equal and finite (about -2.9e38 in the log2 domain, far below any score).
LOWEST_MASK_BIAS: tl.constexpr = tl.constexpr(-2.0e38)


@triton.jit
def mask_bias_log2(mask_values):
    """Additive mask entries in the log2 domain (float32), never overflowing to -inf (-inf entries are ruled out
    by mask_allows, not by this)."""
    return tl.maximum(mask_values.to(tl.float32), LOWEST_MASK_BIAS) * LOG2_E


@triton.jit
def finite_row_max(row_max):
    """The row max to subtract before exp2: 0 for rows with nothing to attend to yet (max -inf), so that
    -inf - -inf never makes a NaN."""
    return tl.where(row_max == float("-inf"), 0.0, row_max)


@triton.jit
def normalize_rows(row_sum, row_max):
    """1 / row sum, and the row's natural-log LSE, for rows that attended to something; 0 and -inf for the
    others (their output is 0)."""
    has_mass = row_sum > 0.0
    safe_sum = tl.where(has_mass, row_sum, 1.0)
    inv_sum = tl.where(has_mass, 1.0 / safe_sum, 0.0)
    lse = tl.where(has_mass, (row_max + tl.math.log2(safe_sum)) * LN_2, float("-inf"))
    return inv_sum, lse


# Below this |x| tanh is its Taylor series to x^5 (the next term, 17 x^7 / 315, is 3.2e-9 of tanh there):
# 1 - exp2(-2|x| log2 e) cancels to a relative error of about 1e-7 / |x|, so a cap far above the scores (x = score /
# softcap tiny) would lose its logits' low digits, at softcap 1e8 all of them (an absolute logit error of about
# 3e-8 x softcap).
TANH_SERIES_BELOW = tl.constexpr(0.0625)


@triton.jit
def tanh_via_exp2(x):
    """tanh(x) from one exp2 (the soft cap's tanh; Triton has no tanh every backend and the interpreter share), and
    from its series near 0. Odd by construction; within about 1e-6 of tanh(x), relatively, at every x."""
    decay = tl.math.exp2(tl.abs(x) * (-2.0 * LOG2_E))
    magnitude = (1.0 - decay) / (1.0 + decay)
    squared = x * x
    series = x * (1.0 - squared * (1.0 / 3.0 - squared * (2.0 / 15.0)))
    return tl.where(tl.abs(x) < TANH_SERIES_BELOW, series, tl.where(x < 0, -magnitude, magnitude))
