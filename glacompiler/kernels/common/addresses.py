"""Tensor addresses as the kernels' layout checks read them."""
from __future__ import annotations

from torch import Tensor
from torch._subclasses.fake_tensor import is_fake


def misaligned(tensor: Tensor, alignment: int = 16) -> bool:
    """Whether the tensor's first element is not on an `alignment`-byte boundary. A traced tensor (fake, or
    functional over fake, as the compiler's pass sees a call) has no address and counts as aligned: the pass
    only asks which family its launches would take, and a kept op call checks the real tensor when it runs
    (torch 2.11 raises on a functional tensor's data_ptr)."""
    return not is_fake(tensor) and tensor.data_ptr() % alignment != 0
