"""The soft cap's tanh alone in a kernel (test_extensions_interpreted.py): imported by a test once the interpreter is
on, as the op's generated kernels are."""
import triton
import triton.language as tl

from glacompiler.kernels.common.softmax import TANH_SERIES_BELOW, tanh_via_exp2

__all__ = ["TANH_SERIES_BELOW", "tanh_kernel"]


@triton.jit
def tanh_kernel(X, Y, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(Y + offsets, tanh_via_exp2(tl.load(X + offsets)))
