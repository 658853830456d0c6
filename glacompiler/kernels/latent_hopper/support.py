"""Which calls the Hopper latent kernel runs, and why not the others.

The kernel loads key blocks by TMA, so it needs an sm_90 GPU, Triton with Gluon (3.6 on), a cache whose rows
form a 2-D [rows, width] view with 16-byte aligned strides, and pages of at least 16 keys. It takes any
attn_mask: a key vector per sequence (a static cache's filled prefix) or one per head or draft token
(speculative decoding). The checks read shapes, strides and the device only: no host-device sync."""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from ...spec import AttentionSpec, ProblemShape
from ..common.addresses import misaligned
from ..common.device_limits import cuda_index
from .config import LATENT_WIDTHS, MIN_PAGE, LatentHopperTile

NOT_A_LATENT_LAYOUT = f"not a latent layout of width {' or '.join(map(str, LATENT_WIDTHS))}"


@functools.lru_cache(maxsize=None)
def _is_sm90(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) == (9, 0)


@functools.lru_cache(maxsize=None)
def gluon_available() -> bool:
    try:
        from triton.experimental.gluon.language.nvidia.hopper import tma  # noqa: F401
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def device_problem(device: torch.device) -> Optional[str]:
    """Why this device cannot run the kernel, or None."""
    if device.type != "cuda":
        return "not on a CUDA device"
    if not _is_sm90(cuda_index(device)):
        return "not an sm_90 GPU"
    if not gluon_available():
        return "this Triton has no Gluon TMA support"
    return None


def spec_problem(spec: AttentionSpec, shape: ProblemShape) -> Optional[str]:
    """Why the kernel cannot take this head layout or page size, or None (the cheap checks)."""
    if not spec.tied or spec.head_dim_q != spec.head_dim_k or spec.head_dim_k not in LATENT_WIDTHS:
        return NOT_A_LATENT_LAYOUT
    if spec.rope_dim == 0:
        return "no rope key"
    if not LatentHopperTile(row_split=False).holds_two_stages(spec):
        return f"a {spec.rope_dim}-wide rope key leaves no room for two key-block stages beside the query tile"
    if spec.dtype not in ("bfloat16", "float16"):
        return f"dtype {spec.dtype}"
    if 0 < shape.page_size < MIN_PAGE:
        return f"page size {shape.page_size} is below {MIN_PAGE}"
    if shape.capacity == 0:
        return "an empty cache (a TMA view needs rows)"
    return None


def _rows_view_problem(name: str, cache: Tensor, width: int) -> Optional[str]:
    """Why `cache` [pages or B, slots, (heads,) dims] is no 2-D [rows, width] TMA view, or None."""
    element = cache.element_size()
    if cache.stride(-1) != 1 or misaligned(cache):
        return f"{name} is not 16-byte aligned with unit last stride"
    if cache.dim() == 4 and cache.shape[2] > 1 and cache.stride(2) != cache.shape[3]:
        return f"{name} heads are not adjacent"
    if cache.stride(0) != cache.shape[1] * cache.stride(1) or (cache.stride(1) * element) % 16:
        return f"{name} rows are not evenly spaced at a 16-byte multiple"
    if cache.stride(1) < width:
        return f"{name} rows overlap"
    return None


# Elements a query row's strides must be multiples of (the JIT's view of rows copied in 16-byte pieces).
QUERY_ROW_ALIGNMENT = 16


def _query_rows_problem(name: str, query: Tensor) -> Optional[str]:
    """Query rows are copied in 16-byte pieces (cp.async): the JIT must see 16-byte aligned rows."""
    if misaligned(query) or any(size > 1 and stride % QUERY_ROW_ALIGNMENT
                                for size, stride in zip(query.shape[:3], query.stride()[:3])):
        return f"{name} rows are not {QUERY_ROW_ALIGNMENT}-element aligned"
    return None


def layout_problem(q: Tensor, q_rope: Optional[Tensor], k_cache: Tensor, k_rope_cache: Optional[Tensor],
                   spec: AttentionSpec, shape: ProblemShape) -> Optional[str]:
    """What keeps a call of a latent layout the kernel takes (spec_problem is None) off it on an sm_90 GPU: the
    tensors' alignment and strides. None where the call runs on the kernel.

    Every latent layout the kernel can run takes it, however few packed (query head, token) rows a latent head
    has: on an H100 it timed at least as fast as the portable kernels' best choice from 8 rows per latent head
    on, batch 1 to 128 (benchmarks/RESULTS.md)."""
    return (_query_rows_problem("q", q) or _query_rows_problem("q_rope", q_rope)
            or _rows_view_problem("k_cache", k_cache, spec.num_kv_heads * spec.head_dim_k)
            or _rows_view_problem("k_rope_cache", k_rope_cache, spec.rope_dim))
