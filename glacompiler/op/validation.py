"""Input checks for attention_with_kvcache: every problem is a ValueError/TypeError naming the argument,
raised before any kernel runs. The checks that read values (lengths, page ids: check_values) run for CPU tensors
always, and on a GPU, where they would sync with the device, only with debug checks on (GLACOMPILER_DEBUG=1 when
glacompiler is imported, or set_debug_checks(True)): there the kernels bound those values instead, so that no input
makes them read outside their tensors."""
from __future__ import annotations

import math
import numbers
import os
from typing import Optional

import torch
from torch import Tensor

from ..kernels.common.mask_range import KEY_RANGE_ROWS
from ..kernels.common.splits import MAX_SPLITS
from ..reference import lengths_and_gathered
from ..spec import AttentionSpec, ProblemShape, dtype_name

try:
    from numpy import bool_ as _NUMPY_BOOL
except ImportError:  # (numpy is optional to torch)
    class _NUMPY_BOOL:  # noqa: N801 - nothing is an instance
        pass

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM_QK = 576
MAX_HEAD_DIM_V = 512
ROPE_DIMS = (0, 16, 32, 48, 64)
MAX_QUERY_LEN = 16


# Read once: every repeat call asks, and a read of os.environ costs about 0.7 us (a twentieth of a repeat call's
# Python path, benchmarks/host_python_path.py).
_debug_checks = os.environ.get("GLACOMPILER_DEBUG", "0") not in ("", "0")


def debug_checks_enabled() -> bool:
    return _debug_checks


def set_debug_checks(enabled: bool) -> bool:
    """Turn the value checks of GPU calls on or off for this process (GLACOMPILER_DEBUG=1 at import turns them on);
    returns the previous setting. Eager calls follow it at once. A graph follows the setting it was compiled under:
    compiled with checks on, its sites call the op (which checks); compiled with them off, its sites may launch the
    kernels themselves and check nothing (set this before torch.compile, or torch._dynamo.reset() after it)."""
    global _debug_checks
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    previous, _debug_checks = _debug_checks, enabled
    return previous


def _require_tensor(name: str, value, ndim: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def _require_like(name: str, value: Tensor, q: Tensor, check_dtype: bool = True) -> None:
    if value.device != q.device:
        raise ValueError(f"{name} is on {value.device} but q is on {q.device}")
    if check_dtype and value.dtype != q.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but q has dtype {q.dtype}; they must match")


def _require_int32_per_sequence(name: str, value, ndim: int, q: Tensor, items: str) -> Tensor:
    """An int32 tensor on q's device with one row (or entry) per sequence of q."""
    value = _require_tensor(name, value, ndim)
    _require_like(name, value, q, check_dtype=False)
    if value.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {value.dtype}")
    if value.shape[0] != q.shape[0]:
        raise ValueError(f"{name} has {value.shape[0]} {items} but q has batch {q.shape[0]}")
    return value


def _require_unit_last_stride(name: str, value: Tensor) -> None:
    if value.shape[-1] > 1 and value.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension (stride {value.stride(-1)})")


def _require_head_dim(name: str, dim: int, limit: int) -> None:
    if dim % 8 != 0 or not 8 <= dim <= limit:
        raise ValueError(f"{name} has head dim {dim}; supported: multiples of 8 from 8 to {limit}")


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether shape broadcasts to exactly target (a plain loop: torch.broadcast_shapes costs more host time
    than the rest of the checks together)."""
    if len(shape) > len(target):
        return False
    return all(size in (1, wanted) for size, wanted in zip(reversed(shape), reversed(target)))


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _sdpa_layout_hint(q, k_cache, page_table) -> str:
    """A hint for tensors in SDPA's [B, H, L, D] layout, where the op takes [B, L, H, D]: when swapping dims 1
    and 2 of q and k_cache would give a valid head grouping and query length."""
    if page_table is not None or not isinstance(k_cache, Tensor) or k_cache.dim() != 4:
        return ""
    heads, query_len, kv_heads = q.shape[1], q.shape[2], k_cache.shape[1]
    if kv_heads >= 1 and heads % kv_heads == 0 and 1 <= query_len <= MAX_QUERY_LEN:
        return (f". If q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)} are in SDPA's [B, H, L, D] layout, "
                "pass q.transpose(1, 2) and k_cache.transpose(1, 2) (and v_cache likewise): the op takes "
                "[B, L, H, D]")
    return ""


def validate_inputs(
    q,
    k_cache,
    v_cache,
    q_rope,
    k_rope_cache,
    cache_seqlens,
    page_table,
    attn_mask,
    softmax_scale,
    num_splits,
    kv_range=None,
    softcap=0.0,
    alibi_slopes=None,
    sinks=None,
    window_size=(-1, -1),
    read_values=True,
    causal=True,
) -> tuple[AttentionSpec, ProblemShape]:
    """(spec, shape) of a call, or ValueError/TypeError naming the argument. read_values=False leaves out the checks
    that read tensor values (GLACOMPILER_DEBUG=1's on the GPU): for fake tensors, which have none."""
    q = _require_tensor("q", q, 4)
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q has dtype {q.dtype}; supported: float16, bfloat16, float32")
    _require_unit_last_stride("q", q)
    batch, query_len, num_q_heads, head_dim_q = q.shape
    if num_q_heads < 1:
        raise ValueError(f"q has no heads (shape {tuple(q.shape)}): it needs at least one")
    if not 0 < query_len <= MAX_QUERY_LEN:
        raise ValueError(f"q has query length {query_len}; supported: 1 to {MAX_QUERY_LEN}"
                         + _sdpa_layout_hint(q, k_cache, page_table))

    paged = page_table is not None
    k_cache = _require_tensor("k_cache", k_cache, 4)
    _require_like("k_cache", k_cache, q)
    _require_unit_last_stride("k_cache", k_cache)
    num_kv_heads, head_dim_k = k_cache.shape[2], k_cache.shape[3]
    if paged:
        page_table = _require_int32_per_sequence("page_table", page_table, 2, q, "rows")
        if k_cache.shape[0] == 0:
            raise ValueError("k_cache holds no pages (a paged cache needs at least one)")
        page_size = k_cache.shape[1]
        if not _is_power_of_two(page_size):
            raise ValueError(f"k_cache page size (dim 1 of a paged cache) must be a power of two, got {page_size}")
        capacity = page_table.shape[1] * page_size
    else:
        if k_cache.shape[0] != batch:
            raise ValueError(f"k_cache has batch {k_cache.shape[0]} but q has batch {batch}")
        page_size = 0
        capacity = k_cache.shape[1]

    if num_kv_heads < 1 or num_q_heads % num_kv_heads != 0:
        raise ValueError(
            f"q has {num_q_heads} heads, which is not a multiple of k_cache's {num_kv_heads} KV heads"
            + _sdpa_layout_hint(q, k_cache, page_table)
        )
    _require_head_dim("q", head_dim_q, MAX_HEAD_DIM_QK)
    _require_head_dim("k_cache", head_dim_k, MAX_HEAD_DIM_QK)

    tied = v_cache is None
    if tied:
        head_dim_v = head_dim_k
    else:
        v_cache = _require_tensor("v_cache", v_cache, 4)
        _require_like("v_cache", v_cache, q)
        _require_unit_last_stride("v_cache", v_cache)
        if tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]):
            raise ValueError(
                f"v_cache shape {tuple(v_cache.shape)} must match k_cache {tuple(k_cache.shape)} "
                "in every dim but the last"
            )
        head_dim_v = v_cache.shape[3]
    _require_head_dim("v_cache" if not tied else "k_cache (as V)", head_dim_v, MAX_HEAD_DIM_V)

    if (q_rope is None) != (k_rope_cache is None):
        raise ValueError("q_rope and k_rope_cache must be given together")
    rope_dim = 0
    if q_rope is not None:
        q_rope = _require_tensor("q_rope", q_rope, 4)
        _require_like("q_rope", q_rope, q)
        _require_unit_last_stride("q_rope", q_rope)
        if tuple(q_rope.shape[:3]) != (batch, query_len, num_q_heads):
            raise ValueError(f"q_rope shape {tuple(q_rope.shape)} must start with q's {(batch, query_len, num_q_heads)}")
        rope_dim = q_rope.shape[3]
        if rope_dim not in ROPE_DIMS[1:]:
            raise ValueError(f"q_rope has rope dim {rope_dim}; supported: {ROPE_DIMS[1:]}")
        k_rope_cache = _require_tensor("k_rope_cache", k_rope_cache, 3)
        _require_like("k_rope_cache", k_rope_cache, q)
        _require_unit_last_stride("k_rope_cache", k_rope_cache)
        expected = (k_cache.shape[0], k_cache.shape[1], rope_dim)
        if tuple(k_rope_cache.shape) != expected:
            raise ValueError(f"k_rope_cache shape {tuple(k_rope_cache.shape)} must be {expected} (like k_cache)")

    if head_dim_q != head_dim_k and not (tied and rope_dim > 0 and head_dim_q == head_dim_k - rope_dim):
        raise ValueError(
            f"q head dim {head_dim_q} must equal k_cache head dim {head_dim_k}"
            + (f", or k_cache head dim minus rope dim ({head_dim_k - rope_dim}) for tied GTA" if tied else "")
        )

    if cache_seqlens is not None:
        cache_seqlens = _require_int32_per_sequence("cache_seqlens", cache_seqlens, 1, q, "entries")

    if attn_mask is not None:
        _require_mask(attn_mask)
        _require_like("attn_mask", attn_mask, q, check_dtype=False)
        target = (batch, num_q_heads, query_len, capacity)
        if not _broadcasts_to(tuple(attn_mask.shape), target):
            raise ValueError(
                f"attn_mask shape {tuple(attn_mask.shape)} is not broadcastable to [B, Hq, Lq, S] = {target}"
            )

    if kv_range is not None:
        if attn_mask is None:
            raise ValueError("kv_range is the key range of attn_mask: it needs attn_mask")
        _require_tensor("kv_range", kv_range, 2)
        _require_like("kv_range", kv_range, q, check_dtype=False)
        if (kv_range.dtype != torch.int32 or tuple(kv_range.shape) != (KEY_RANGE_ROWS, batch)
                or kv_range.stride(-1) != 1):
            raise ValueError(f"kv_range must be a contiguous int32 [{KEY_RANGE_ROWS}, {batch}] tensor (mask_key_range's "
                             f"result), got {kv_range.dtype} {tuple(kv_range.shape)}")

    if softmax_scale is not None:
        if not _is_real_number(softmax_scale):
            raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
        if not _is_finite(softmax_scale):
            raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    if not _is_flag(causal):
        raise TypeError(f"causal must be a bool, got {causal!r}" + (" (a tensor: pass bool(causal))"
                                                                    if isinstance(causal, Tensor) else ""))
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"num_splits must be None or an int from 1 to {MAX_SPLITS}, got {num_splits!r}")

    spec = AttentionSpec.from_dims(num_q_heads, num_kv_heads, head_dim_q, head_dim_k, head_dim_v, rope_dim, tied,
                                   paged, dtype_name(q.dtype))
    # (always, not only where one is on: a falsy non-number such as softcap=None is no "off")
    validate_extensions(q, spec, softcap, alibi_slopes, sinks, window_size)
    shape = ProblemShape(batch=batch, query_len=query_len, capacity=capacity, page_size=page_size)
    if read_values and debug_checks_enabled():
        check_values(k_cache, cache_seqlens, page_table, shape, attn_mask)
    return spec, shape


def _require_mask(attn_mask) -> None:
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = attend) or floating (additive), got {attn_mask.dtype}")


def validate_key_range_arguments(attn_mask, batch, capacity) -> None:
    """mask_key_range's arguments: a bool or floating mask broadcastable to [batch, any, any, capacity]."""
    _require_mask(attn_mask)
    for name, value in (("batch", batch), ("capacity", capacity)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    shape = tuple(attn_mask.shape)
    heads, tokens = ((1, 1, 1) + shape)[-3:-1]  # (any sizes: the calls' Hq and Lq are not known here)
    if not shape or not _broadcasts_to(shape, (batch, heads, tokens, capacity)):
        raise ValueError(f"attn_mask shape {shape} is not broadcastable to [B, Hq, Lq, S] with B = {batch}, "
                         f"S = {capacity}")


def _is_real_number(value) -> bool:
    """A Python or NumPy real scalar, not a bool (True is no scale)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, _NUMPY_BOOL))


def _is_finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


def _is_flag(value) -> bool:
    """A bool, NumPy's included, or an integer 0 or 1 (what bool() of them means)."""
    return isinstance(value, (bool, _NUMPY_BOOL)) or (isinstance(value, numbers.Integral) and value in (0, 1))


# The kernels take softcap * log2(e) as float32 (kernels/common/log2_domain.py), which overflows past 2.36e38: caps
# above 1e38 (far beyond any model's) are refused.
MAX_SOFTCAP = 1e38


def validate_extensions(q: Tensor, spec: AttentionSpec, softcap, alibi_slopes, sinks, window_size) -> None:
    """FlashAttention's extensions (softcap, alibi_slopes, sinks, window_size), with its meanings."""
    batch, _, num_q_heads, _ = q.shape
    if not _is_real_number(softcap):
        raise TypeError(f"softcap must be a float (0 = off), got {type(softcap).__name__}")
    if not 0 <= softcap <= MAX_SOFTCAP:  # (NaN fails both)
        raise ValueError(f"softcap must be a finite float from 0 (off) to {MAX_SOFTCAP:.3g}, got {softcap}")
    latent = spec.kind in ("mla", "gla")
    if softcap and latent:
        raise ValueError(f"softcap is not supported for latent ({spec.kind}) layouts: no latent model caps its scores")
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, Tensor):
            raise TypeError(f"alibi_slopes must be a torch.Tensor, got {type(alibi_slopes).__name__}")
        _require_like("alibi_slopes", alibi_slopes, q, check_dtype=False)
        if alibi_slopes.dtype != torch.float32:
            raise TypeError(f"alibi_slopes must be float32, got {alibi_slopes.dtype}")
        if tuple(alibi_slopes.shape) not in ((num_q_heads,), (batch, num_q_heads)):
            raise ValueError(f"alibi_slopes must have shape [Hq] = [{num_q_heads}] or [B, Hq] = [{batch}, "
                             f"{num_q_heads}], got {tuple(alibi_slopes.shape)}")
        _require_unit_last_stride("alibi_slopes", alibi_slopes)
        if latent:
            raise ValueError(f"alibi_slopes is not supported for latent ({spec.kind}) layouts: no latent model uses "
                             "ALiBi")
    if sinks is not None:
        if not isinstance(sinks, Tensor):
            raise TypeError(f"sinks must be a torch.Tensor, got {type(sinks).__name__}")
        _require_like("sinks", sinks, q, check_dtype=False)
        if sinks.dtype not in (torch.float32, q.dtype):
            raise TypeError(f"sinks must be float32 or q's dtype {q.dtype}, got {sinks.dtype}")
        if tuple(sinks.shape) != (num_q_heads,):
            raise ValueError(f"sinks must have shape [Hq] = [{num_q_heads}], got {tuple(sinks.shape)}")
        _require_unit_last_stride("sinks", sinks)
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or any(isinstance(w, bool) or not isinstance(w, int) for w in window_size)):
        raise TypeError(f"window_size must be a pair of ints (left, right), -1 = unlimited, got {window_size!r}")
    if min(window_size) < -1:
        raise ValueError(f"window_size entries must be >= -1 (-1 = unlimited), got {tuple(window_size)}")


def check_values(k_cache: Tensor, cache_seqlens: Optional[Tensor], page_table: Optional[Tensor], shape: ProblemShape,
                 attn_mask: Optional[Tensor] = None) -> None:
    """The checks that read values: lengths within the capacity, page ids of the slots that hold valid tokens
    within the cache (up to the lengths or, with only a mask, up to its last allowed key: the kernels visit no
    key past it, and page-table slots there may hold anything). Always for CPU tensors; on a GPU they would
    sync, so only with GLACOMPILER_DEBUG=1 (the kernels clamp both instead: kernels/common/clamps.py)."""
    if shape.batch == 0:
        return
    if cache_seqlens is not None:
        low, high = int(cache_seqlens.min()), int(cache_seqlens.max())
        if low < 0 or high > shape.capacity:
            raise ValueError(f"cache_seqlens must lie in [0, {shape.capacity}], got values in [{low}, {high}]")
    if page_table is not None:
        _, lengths = lengths_and_gathered(cache_seqlens, attn_mask, shape.batch, shape.capacity, page_table.device)
        slots = torch.arange(page_table.shape[1], device=page_table.device)
        used = slots[None, :] * shape.page_size < lengths[:, None]
        pages = page_table[used]
        if pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= k_cache.shape[0]):
            raise ValueError(
                f"page_table holds page ids outside [0, {k_cache.shape[0]}) in slots covering valid tokens"
            )
