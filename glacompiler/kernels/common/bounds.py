"""Triton helpers that keep every decode kernel inside its tensors whatever the lengths and page ids hold.

The op cannot check those values on a GPU without a host-device sync, so the kernels bound them instead: a
length is taken within [0, capacity] and a page id within [0, num_pages), so that no load leaves the caches,
the page table or the mask. The rows of a call with such values get unspecified results; memory stays safe.
(GLACOMPILER_DEBUG=1 checks the values on the host and raises; CPU tensors are always checked.)"""
import triton
import triton.language as tl


@triton.jit
def bounded_length(length, capacity):
    """A sequence's length as the kernels use it: within [0, capacity]."""
    return tl.minimum(tl.maximum(length, 0), capacity)


@triton.jit
def bounded_page(page, num_pages):
    """A page id as the kernels use it: within [0, num_pages)."""
    return tl.minimum(tl.maximum(page, 0), num_pages - 1)
