"""Triton helpers that keep every decode kernel inside its tensors whatever the lengths and page ids hold.

The op cannot check those values on a GPU without a host-device sync, so the kernels bound them instead: a
length is taken within [0, capacity] and, in the portable kernels, a page id within [0, num_pages), so that no
load leaves the caches, the page table or the mask. (The Hopper latent kernel reads the cache by TMA, which
fills rows outside the cache with zeros: it bounds the lengths only.) The rows of a call with such values get unspecified results; memory stays safe.
(GLACOMPILER_DEBUG=1 checks the values on the host and raises; CPU tensors are always checked.)"""
import triton
import triton.language as tl


@triton.jit
def bounded_length(length, capacity):
    """A sequence's length as the kernels use it: within [0, capacity]."""
    return tl.minimum(tl.maximum(length, 0), capacity)


@triton.jit
def bounded_page(page, num_pages):
    """A page id as the kernels use it: within [0, num_pages). One unsigned min per id (it runs for every key a
    thread loads): a negative id, read as unsigned, lies above every page."""
    return tl.minimum(page.to(tl.uint32, bitcast=True), (num_pages - 1).to(tl.uint32, bitcast=True))
