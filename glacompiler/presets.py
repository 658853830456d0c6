"""The paper's configurations, in one place (arXiv 2505.21487, Zadouri, Strauss, Dao 2025).

- PAPER_SPECS: the attention layouts of the paper's decode benchmarks (Hq 128; MLA 512+64, GLA-2 and GLA-8
  256+64 per latent head, GTA and GQA as the presets the kernels are measured on), as AttentionSpecs (bf16,
  paged): what the benchmarks, the tuner's --preset and the GPU tests use.
- PAPER_SIZES / PAPER_VARIANTS / paper_config: the paper's model sizes (Appendix B.1) for the models package,
  and tiny_config, a small model for tests and the demo.

Variant names follow the paper: "mha", "mqa", "gqa-<KV heads>", "gta-<tied KV heads>", "mla",
"gla-<latent heads>", each optionally suffixed "-dr<N>" to override the rope width d_R (e.g. "mla-dr48").
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

from .models.config import AttentionConfig, ModelConfig
from .spec import AttentionSpec

PAPER_SPECS = {
    "mla": AttentionSpec.latent(128, 1, 512, 64, paged=True),
    "gla2": AttentionSpec.latent(128, 2, 256, 64, paged=True),
    "gla8": AttentionSpec.latent(128, 8, 256, 64, paged=True),
    "gta": AttentionSpec.grouped_tied(16, 4, 128, 64, paged=True),
    "gqa": AttentionSpec.grouped(32, 8, 128, paged=True),
}

# Llama 3 tokenizer (Appendix B.1: "vocabulary size of 128K tokens"); the parameter counts of Tables 7-10 are
# reproduced with 128256 entries and input/output embeddings tied.
PAPER_VOCAB_SIZE = 128256


@dataclasses.dataclass(frozen=True)
class PaperSize:
    """One row of Table 6, plus the rope width the paper uses at that size."""

    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    latent_rope_dim: int  # d_R of MLA/GLA


# Table 6. d_R: the XL value 64 follows from Table 5's cache sizes (576 elements = 512 + 64); the Large
# value 32 is stated with Tables 4, 9 and 13; Small and Medium do not state it, d_h/2 = 32 reproduces their
# parameter counts. GTA always uses d_R = d_h/2 (Sec. 3.3.1), which Table 9's GTA-4 count confirms at Large (48).
PAPER_SIZES = {
    "small": PaperSize(n_layers=12, d_model=768, n_heads=12, head_dim=64, latent_rope_dim=32),
    "medium": PaperSize(n_layers=24, d_model=1024, n_heads=16, head_dim=64, latent_rope_dim=32),
    "large": PaperSize(n_layers=24, d_model=1536, n_heads=16, head_dim=96, latent_rope_dim=32),
    "xl": PaperSize(n_layers=24, d_model=2048, n_heads=16, head_dim=128, latent_rope_dim=64),
}

# Tables 7-10: per size and variant, (FFN intermediate size, total parameters in millions). The paper widens
# each variant's MLP until it matches MHA's parameter count. Left out: GLA_q (GLA with its query latent split
# per latent head for tensor parallelism; it caches the same as GLA), and Table 9's "GLA-2 (d_R:48)" row, whose
# 876.96M is only reproduced as GLA_q-2 with d_R = 48 (the name Tables 4 and 13 give it). The paper trains no
# MQA at XL.
PAPER_VARIANTS = {
    "small": {"mla": (2128, 183.65), "gla-2": (2208, 183.51), "mha": (2048, 183.45), "mqa": (2520, 183.53),
              "gta-4": (2462, 183.40), "gqa-4": (2392, 183.53)},
    "medium": {"gla-2": (3152, 433.89), "mla": (3062, 433.55), "gta-4": (3320, 433.57), "gqa-4": (3248, 433.77),
               "mha": (2736, 433.77), "mqa": (3376, 433.77)},
    "large": {"mha": (4096, 876.55), "gqa-4": (4864, 876.55), "mqa": (5056, 876.55), "gta-4": (4976, 876.55),
              "mla": (4640, 876.73), "mla-dr48": (4592, 876.74), "gla-2": (4768, 876.73)},
    "xl": {"mla": (6120, 1470.58), "gla-2": (6292, 1470.78), "mha": (5464, 1471.12), "gta-4": (6638, 1471.22),
           "gqa-4": (6486, 1470.83)},
}

# MLA/GLA query low-rank width: the paper does not state it; the authors' released GLA modeling code
# (github.com/Dao-AILab/grouped-latent-attention) uses 8 d_h, and that reproduces Tables 7-10.
PAPER_QUERY_LATENT_PER_HEAD_DIM = 8

_VARIANT = re.compile(r"^(mha|mqa|mla|gqa-\d+|gta-\d+|gla-\d+)(?:-dr(\d+))?$")


def attention_config(variant: str, d_model: int, n_heads: int, head_dim: int, *, rope_dim: Optional[int] = None,
                     q_latent_dim: int = 0, rope_theta: float = 10000.0) -> AttentionConfig:
    """AttentionConfig for a paper-style variant name (see the module docstring)."""
    match = _VARIANT.match(variant.lower())
    if match is None:
        raise ValueError(f"unknown attention variant {variant!r}; expected mha, mqa, mla, gqa-N, gta-N or gla-N "
                         "(optionally with -drN)")
    name, suffix_rope = match.group(1), match.group(2)
    kind, _, count = name.partition("-")
    if suffix_rope is not None:
        rope_dim = int(suffix_rope)
    fields = dict(kind=kind, d_model=d_model, n_heads=n_heads, head_dim=head_dim, rope_theta=rope_theta)
    if kind in ("gqa", "gta"):
        fields["n_kv_heads"] = int(count)
    if kind == "gla":
        fields["n_latent_heads"] = int(count)
    if kind in ("gta", "mla", "gla"):
        fields["rope_dim"] = rope_dim
    elif rope_dim is not None:
        raise ValueError(f"{variant}: rope_dim applies to gta/mla/gla only (others rotate the whole head)")
    if kind in ("mla", "gla"):
        fields["q_latent_dim"] = q_latent_dim
    return AttentionConfig(**fields)


def paper_config(size: str, variant: str, *, n_layers: Optional[int] = None,
                 vocab_size: int = PAPER_VOCAB_SIZE) -> ModelConfig:
    """The paper's model of `size` ("small", "medium", "large", "xl") with attention `variant` as trained there
    (Tables 6-10). n_layers overrides the depth (e.g. 8 layers for a decode benchmark)."""
    if size not in PAPER_SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(PAPER_SIZES)}")
    variants = PAPER_VARIANTS[size]
    if variant not in variants:
        raise ValueError(f"the paper trains no {variant!r} at size {size!r}; it has {sorted(variants)}")
    dims = PAPER_SIZES[size]
    kind = variant.split("-")[0]
    latent = kind in ("mla", "gla")
    attention = attention_config(
        variant, dims.d_model, dims.n_heads, dims.head_dim, rope_dim=dims.latent_rope_dim if latent else None,
        q_latent_dim=PAPER_QUERY_LATENT_PER_HEAD_DIM * dims.head_dim if latent else 0,
    )
    return ModelConfig(attention=attention, n_layers=n_layers or dims.n_layers, vocab_size=vocab_size,
                       ffn_dim=variants[variant][0], tie_embeddings=True)


def tiny_config(variant: str = "gla-2", *, n_layers: int = 2, q_latent_dim: int = 64) -> ModelConfig:
    """A few-layer model for tests and demos: 16 query heads of 32 (so GQA/GTA/GLA groups of 2 to 16 divide
    them), d_R = 16, widths the fused op accepts (multiples of 8, d_R in {16, 32, 48, 64})."""
    attention = attention_config(variant, d_model=128, n_heads=16, head_dim=32,
                                 q_latent_dim=q_latent_dim if variant.startswith(("mla", "gla")) else 0)
    return ModelConfig(attention=attention, n_layers=n_layers, vocab_size=257, ffn_dim=256)
