"""Triton helpers that keep the decode kernels inside their tensors whatever the lengths and page ids hold.

The op cannot check those values on a GPU without a host-device sync, so the kernels clamp them instead; the
rows of a call with such values get unspecified results, and memory stays safe. (GLACOMPILER_DEBUG=1 checks the
values on the host and raises; CPU tensors are always checked.)
- The portable kernels clamp each length to [0, capacity] and each page id to [0, num_pages): no load leaves the
  caches, the page table or the mask.
- The Hopper latent kernel reads the cache by TMA, which fills rows outside the tensor with zeros, so page ids
  need no clamp there; it clamps the last key whose page it reads and, with a mask, the mask's end to the
  capacity (a clamp of the length itself cost GLA-2 1.6-1.9% on an H200: benchmarks/RESULTS.md)."""
import triton
import triton.language as tl


@triton.jit
def bounded_length(length, capacity):
    """A length (or a key index + 1) as the kernels use it: within [0, capacity]."""
    return tl.minimum(tl.maximum(length, 0), capacity)


@triton.jit
def bounded_page(page, num_pages):
    """A page id as the kernels use it: within [0, num_pages). One unsigned min per id (it runs for every id a
    thread loads): a negative id, read as unsigned, lies above every page."""
    return tl.minimum(page.to(tl.uint32, bitcast=True), (num_pages - 1).to(tl.uint32, bitcast=True))
