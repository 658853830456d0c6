"""Specs from command-line dims, and the paper's named configurations."""
from __future__ import annotations

import dataclasses

import torch

from ..spec import AttentionSpec, dtype_from_name
from ..validation import validate_inputs

TUNABLE_KINDS = ("mha", "gqa", "mqa", "gta", "mla", "gla")


@dataclasses.dataclass(frozen=True)
class Dims:
    """Dims as a user states them. GTA: head_dim is the tied state d_h, of which rope_dim is replaced by the
    shared rope key in K (so Dq = d_h - d_R). MLA/GLA: kv_heads are latent heads, head_dim the latent width."""

    kind: str
    heads: int
    kv_heads: int
    head_dim: int
    rope_dim: int


# The paper's configurations (issue 4, section 4).
PRESETS = {
    "mla": Dims("mla", heads=128, kv_heads=1, head_dim=512, rope_dim=64),
    "gla2": Dims("gla", heads=128, kv_heads=2, head_dim=256, rope_dim=64),
    "gla8": Dims("gla", heads=128, kv_heads=8, head_dim=256, rope_dim=64),
    "gta": Dims("gta", heads=16, kv_heads=4, head_dim=128, rope_dim=64),
    "gqa": Dims("gqa", heads=32, kv_heads=8, head_dim=128, rope_dim=0),
}


def spec_from_dims(dims: Dims, dtype: str = "bfloat16", page_size: int = 64) -> AttentionSpec:
    """The AttentionSpec the op itself would derive from tensors of these dims (shapes checked by the op's own
    validation, on meta tensors). ValueError with a readable message for impossible dims."""
    if dims.kind not in TUNABLE_KINDS:
        raise ValueError(f"unknown kind {dims.kind!r}; expected one of {', '.join(TUNABLE_KINDS)}")
    for name in ("heads", "kv_heads", "head_dim"):
        if getattr(dims, name) < 1:
            raise ValueError(f"{name} must be positive, got {getattr(dims, name)}")
    if dims.rope_dim < 0:
        raise ValueError(f"rope dim must be >= 0, got {dims.rope_dim}")
    if page_size < 0:
        raise ValueError(f"page size must be >= 0 (0 = contiguous cache), got {page_size}")
    try:
        torch_dtype = dtype_from_name(dtype)
    except ValueError:
        raise ValueError(f"unknown dtype {dtype!r}; expected bfloat16, float16 or float32") from None

    tied = dims.kind in ("gta", "mla", "gla")
    head_dim_q = dims.head_dim - dims.rope_dim if dims.kind == "gta" else dims.head_dim
    if dims.kind == "gta" and not 0 < dims.rope_dim < dims.head_dim:
        raise ValueError(f"gta needs 0 < rope dim < head dim (d_R < d_h), got d_h {dims.head_dim}, d_R {dims.rope_dim}")

    def meta(*shape, dtype=torch_dtype):
        return torch.empty(*shape, dtype=dtype, device="meta")

    lead = (1, page_size) if page_size else (1, 1)
    q = meta(1, 1, dims.heads, head_dim_q)
    k_cache = meta(*lead, dims.kv_heads, dims.head_dim)
    v_cache = None if tied else meta(*lead, dims.kv_heads, dims.head_dim)
    q_rope = meta(1, 1, dims.heads, dims.rope_dim) if dims.rope_dim else None
    k_rope_cache = meta(*lead, dims.rope_dim) if dims.rope_dim else None
    page_table = meta(1, 1, dtype=torch.int32) if page_size else None
    spec, _ = validate_inputs(q, k_cache, v_cache, q_rope, k_rope_cache, None, page_table, None, None, None)
    if spec.kind != dims.kind:
        raise ValueError(
            f"these dims describe {spec.kind}, not {dims.kind} "
            f"({dims.heads} query heads over {dims.kv_heads} {'latent' if tied else 'KV'} heads)"
        )
    return spec
