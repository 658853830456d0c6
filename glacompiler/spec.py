"""AttentionSpec, the one description of a head layout (the key shared by the op, the pattern pass, the kernel
families, the tuner, the config tables, the models and the benchmarks), and ProblemShape, the rest of a call."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

KINDS = ("mha", "gqa", "mqa", "gta", "mla", "gla")

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise TypeError(f"unsupported dtype {dtype}; expected one of {list(_DTYPE_NAMES.values())}") from None


def dtype_from_name(name: str) -> torch.dtype:
    for dtype, dname in _DTYPE_NAMES.items():
        if dname == name:
            return dtype
    raise ValueError(f"unknown dtype name {name!r}")


def default_softmax_scale(head_dim_q: int, rope_dim: int) -> float:
    """The op's default: 1 / sqrt of the full query width (latent or nope part plus rope part)."""
    return 1.0 / math.sqrt(head_dim_q + rope_dim)


def infer_kind(num_q_heads: int, num_kv_heads: int, head_dim_q: int, head_dim_k: int, tied: bool) -> str:
    """Name the member of the attention family that a set of shapes describes."""
    if tied:
        if head_dim_q < head_dim_k:
            return "gta"  # part of the tied state is replaced by the shared rope key in K
        return "mla" if num_kv_heads == 1 else "gla"
    if num_kv_heads == num_q_heads:
        return "mha"
    return "mqa" if num_kv_heads == 1 else "gqa"


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Structural description of one decode-attention site (no batch or length: those are buckets)."""

    kind: str
    num_q_heads: int
    num_kv_heads: int
    head_dim_q: int  # Dq: width of q and of the part of k_cache it is dotted with
    head_dim_k: int  # Dk: width of k_cache
    head_dim_v: int  # Dv: width of the output (== Dk when tied)
    rope_dim: int  # Dr: width of the shared rope key, 0 when absent
    tied: bool  # V is k_cache itself (GTA/MLA/GLA)
    paged: bool
    dtype: str  # "bfloat16" | "float16" | "float32"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @classmethod
    def grouped(cls, num_q_heads: int, num_kv_heads: int, head_dim: int, head_dim_v: Optional[int] = None, *,
                dtype: str = "bfloat16", paged: bool = False) -> "AttentionSpec":
        """MHA / GQA / MQA: separate K and V per KV head (V may be narrower or wider than K)."""
        return cls.from_dims(num_q_heads, num_kv_heads, head_dim, head_dim,
                             head_dim if head_dim_v is None else head_dim_v, 0, False, paged, dtype)

    @classmethod
    def grouped_tied(cls, num_q_heads: int, num_kv_heads: int, head_dim: int, rope_dim: int, *,
                     dtype: str = "bfloat16", paged: bool = False) -> "AttentionSpec":
        """GTA: a tied state of head_dim per KV head is V whole and, for its first head_dim - rope_dim channels,
        the un-rotated part of K; the rotated part is one rope key shared by every head."""
        return cls("gta", num_q_heads, num_kv_heads, head_dim - rope_dim, head_dim, head_dim, rope_dim, True,
                   paged, dtype)

    @classmethod
    def latent(cls, num_q_heads: int, latent_heads: int, latent_dim: int, rope_dim: int, *,
               dtype: str = "bfloat16", paged: bool = False) -> "AttentionSpec":
        """MLA (one latent head) / GLA (several): the absorbed query attends to the latent, which is also V."""
        return cls.from_dims(num_q_heads, latent_heads, latent_dim, latent_dim, latent_dim, rope_dim, True, paged,
                             dtype)

    def with_storage(self, *, dtype: Optional[str] = None, paged: Optional[bool] = None) -> "AttentionSpec":
        """The same head layout with another dtype or cache paging."""
        return dataclasses.replace(self, dtype=self.dtype if dtype is None else dtype,
                                   paged=self.paged if paged is None else paged)

    @classmethod
    def from_dims(cls, num_q_heads: int, num_kv_heads: int, head_dim_q: int, head_dim_k: int, head_dim_v: int,
                  rope_dim: int, tied: bool, paged: bool, dtype: str) -> "AttentionSpec":
        """A spec whose kind is inferred from its head layout."""
        kind = infer_kind(num_q_heads, num_kv_heads, head_dim_q, head_dim_k, tied)
        return cls(kind, num_q_heads, num_kv_heads, head_dim_q, head_dim_k, head_dim_v, rope_dim, tied, paged, dtype)

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_q_heads // self.num_kv_heads

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def cache_elements_per_token(self) -> int:
        """Elements one token occupies in the caches: K (and V unless tied) per KV head, plus the shared rope key."""
        values = 0 if self.tied else self.head_dim_v
        return self.num_kv_heads * (self.head_dim_k + values) + self.rope_dim

    def key(self) -> str:
        """Stable string key for tables and caches."""
        return (
            f"{self.kind}-hq{self.num_q_heads}-hkv{self.num_kv_heads}-dq{self.head_dim_q}-dk{self.head_dim_k}"
            f"-dv{self.head_dim_v}-dr{self.rope_dim}-{'tied' if self.tied else 'sep'}"
            f"-{'paged' if self.paged else 'contig'}-{self.dtype}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AttentionSpec":
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class ProblemShape:
    """Everything about one call that is not part of the spec: the shape bucket and the page size."""

    batch: int
    query_len: int
    capacity: int  # logical S: k_cache.shape[1], or max_pages * page_size when paged
    page_size: int  # 0 when contiguous


def cache_bytes(spec: AttentionSpec, shape: ProblemShape) -> int:
    """Bytes of cache a call can address: batch x capacity tokens (paged: each sequence's page-table width, not
    the page pool)."""
    return shape.batch * shape.capacity * spec.cache_elements_per_token * spec.torch_dtype.itemsize
