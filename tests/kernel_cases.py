"""The attention family at CPU-test sizes (small but with odd, non-power-of-two dims)."""
from glacompiler.spec import AttentionSpec

CPU_SPECS = {
    "mha": AttentionSpec.grouped(4, 4, 32),
    "gqa": AttentionSpec.grouped(8, 2, 40, 24),  # Dq = Dk = 40, Dv = 24: not powers of two
    "mqa": AttentionSpec.grouped(4, 1, 64),
    "gta": AttentionSpec.grouped_tied(8, 2, 96, 48),  # the paper's Large: d_h 96, d_R 48, so Dq = 48
    "mla": AttentionSpec.latent(16, 1, 136, 32),  # latent 136 = 128 + 8: a padded last chunk
    "gla2": AttentionSpec.latent(16, 2, 64, 16),
    "gla8": AttentionSpec.latent(16, 8, 32, 16),
}
