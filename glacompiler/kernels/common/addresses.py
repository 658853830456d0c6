"""Tensor addresses as the kernels' layout checks read them."""
from __future__ import annotations

from torch import Tensor
from torch._subclasses.fake_tensor import is_fake


def misaligned(tensor: Tensor, alignment: int = 16) -> bool:
    """Whether the tensor's first element is not on an `alignment`-byte boundary. A fake tensor (what the compiler's
    pass holds of a call: torch 2.11 raises on its data_ptr, 2.13 warns and gives 0) has no address and counts as
    aligned. That is safe where the answer only picks a family whose calls stay op calls (the Hopper latent
    kernels: the op checks the real tensor when it runs); a family Inductor launches must not fix an alignment
    choice from it at trace time."""
    return not is_fake(tensor) and tensor.data_ptr() % alignment != 0
