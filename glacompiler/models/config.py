"""Sizes of the reference attention layers and of the small decoder-only model built from them.

Defaults follow arXiv 2505.21487 (Zadouri, Strauss, Dao 2025): GTA's rope key is d_h/2 wide (Sec. 3.3.1);
MLA caches one latent of 4 d_h (Sec. 3.3.2, 512 at d_h = 128 as in DeepSeek); GLA caches h_c = 2 latent
heads of 2 d_h each (Sec. 3.3.2)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..spec import KINDS, AttentionSpec

GROUPED_QUERY_KINDS = ("mha", "gqa", "mqa")
LATENT_KINDS = ("mla", "gla")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Sizes of one attention layer. Fields left None get the kind's default in __post_init__.

    kind: "mha" | "gqa" | "mqa" (separate K and V, RoPE on the whole head), "gta" (tied KV state per KV head
    plus one shared rope key), "mla" (one latent head) or "gla" (n_latent_heads latent heads)."""

    kind: str
    d_model: int
    n_heads: int
    head_dim: int
    n_kv_heads: Optional[int] = None  # mha/gqa/mqa/gta; mha: n_heads, mqa: 1
    rope_dim: Optional[int] = None  # gta/mla/gla: width of the shared rope key (default head_dim // 2)
    latent_dim: Optional[int] = None  # mla/gla: width of one latent head (mla 4 * head_dim, gla 2 * head_dim)
    n_latent_heads: Optional[int] = None  # mla: 1, gla: default 2
    q_latent_dim: int = 0  # mla/gla: rank of the low-rank query projection; 0 = full-rank query
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        _require(self.kind in KINDS, f"kind must be one of {KINDS}, got {self.kind!r}")
        _require(min(self.d_model, self.n_heads, self.head_dim) > 0, "d_model, n_heads, head_dim must be positive")
        if self.kind in LATENT_KINDS:
            self._check_latent()
        else:
            self._check_grouped()
        _require(self.rope_dim > 0 and self.rope_dim % 2 == 0,
                 f"rope_dim must be positive and even (RoPE rotates pairs), got {self.rope_dim}")

    def _check_grouped(self) -> None:
        """mha/gqa/mqa/gta: query heads grouped over n_kv_heads cached heads."""
        _require(self.n_latent_heads is None and self.latent_dim is None and self.q_latent_dim == 0,
                 f"{self.kind} has no latent: leave latent_dim, n_latent_heads and q_latent_dim unset")
        fixed_kv_heads = {"mha": self.n_heads, "mqa": 1}.get(self.kind)
        if fixed_kv_heads is not None:
            _require(self.n_kv_heads in (None, fixed_kv_heads), f"{self.kind} has {fixed_kv_heads} KV heads")
            self._fill("n_kv_heads", fixed_kv_heads)
        _require(self.n_kv_heads is not None, f"{self.kind} needs n_kv_heads")
        _require(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0,
                 "n_heads must be a multiple of n_kv_heads")
        if self.kind == "gta":
            self._fill("rope_dim", self.head_dim // 2 if self.rope_dim is None else self.rope_dim)
            _require(self.rope_dim < self.head_dim, "gta needs rope_dim < head_dim (K's other channels are tied)")
        else:
            # RoPE rotates the whole head: there is no separate rope key.
            _require(self.rope_dim in (None, self.head_dim), f"{self.kind} rotates whole heads: rope_dim = head_dim")
            self._fill("rope_dim", self.head_dim)

    def _check_latent(self) -> None:
        """mla/gla: query heads split contiguously over n_latent_heads latent heads."""
        _require(self.n_kv_heads is None, f"{self.kind} caches latent heads: set n_latent_heads, not n_kv_heads")
        is_mla = self.kind == "mla"
        self._fill("n_latent_heads", (1 if is_mla else 2) if self.n_latent_heads is None else self.n_latent_heads)
        _require(not is_mla or self.n_latent_heads == 1, "mla has exactly one latent head (use gla for more)")
        _require(self.n_latent_heads > 0 and self.n_heads % self.n_latent_heads == 0,
                 "n_heads must be a multiple of n_latent_heads")
        default_latent = (4 if is_mla else 2) * self.head_dim
        self._fill("latent_dim", default_latent if self.latent_dim is None else self.latent_dim)
        self._fill("rope_dim", self.head_dim // 2 if self.rope_dim is None else self.rope_dim)
        _require(self.latent_dim > 0 and self.q_latent_dim >= 0, "latent_dim must be > 0 and q_latent_dim >= 0")

    def _fill(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass: defaults are filled once, here

    @property
    def softmax_scale(self) -> float:
        """1/sqrt of the width of the (non-absorbed) query.key product. MLA/GLA: nope part d_h plus rope d_R,
        as in DeepSeek; the absorbed decode must keep this scale, not the op's default 1/sqrt(d_c + d_R)."""
        width = self.head_dim + self.rope_dim if self.kind in LATENT_KINDS else self.head_dim
        return width ** -0.5

    def cache_spec(self, dtype: str = "bfloat16", paged: bool = False) -> AttentionSpec:
        """The head layout of this layer's decode attention as the fused op sees it (what it caches per token:
        K and V per KV head for MHA/GQA/MQA, the tied state plus one rope key for GTA, the latent heads plus one
        rope key for MLA/GLA; the query is the absorbed one for MLA/GLA)."""
        if self.kind in GROUPED_QUERY_KINDS:
            return AttentionSpec.grouped(self.n_heads, self.n_kv_heads, self.head_dim, dtype=dtype, paged=paged)
        if self.kind == "gta":
            return AttentionSpec.grouped_tied(self.n_heads, self.n_kv_heads, self.head_dim, self.rope_dim,
                                              dtype=dtype, paged=paged)
        return AttentionSpec.latent(self.n_heads, self.n_latent_heads, self.latent_dim, self.rope_dim, dtype=dtype,
                                    paged=paged)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only model: embedding, n_layers x [RMSNorm, attention, RMSNorm, SwiGLU MLP], RMSNorm, lm head."""

    attention: AttentionConfig
    n_layers: int
    vocab_size: int
    ffn_dim: int  # SwiGLU intermediate size
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self):
        _require(min(self.n_layers, self.vocab_size, self.ffn_dim) > 0,
                 "n_layers, vocab_size and ffn_dim must be positive")

    @property
    def d_model(self) -> int:
        return self.attention.d_model
