"""Tensor addresses as the kernels' layout checks read them."""
from __future__ import annotations

from torch import Tensor
from torch._subclasses.fake_tensor import is_fake


def misaligned(tensor: Tensor, alignment: int = 16) -> bool:
    """Whether the tensor's first element is not on an `alignment`-byte boundary. A fake tensor (what the compiler's
    pass holds of a call: torch 2.11 raises on its data_ptr, 2.13 warns and gives 0) has no address: its storage
    offset decides, its storage counted aligned, as PyTorch's allocators make them. A family chosen from that at
    trace time whose kernels a graph cannot launch checks the real tensors at their first call (the op,
    attention_into); a family Inductor launches must not fix an alignment choice from it."""
    if is_fake(tensor):
        return tensor.storage_offset() * tensor.element_size() % alignment != 0
    return tensor.data_ptr() % alignment != 0
