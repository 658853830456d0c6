"""The attention family at CPU-test sizes (small but with odd, non-power-of-two dims)."""
from glacompiler.testing import FamilyMember, gta_member, latent_member

CPU_MEMBERS = {
    "mha": FamilyMember("mha", 4, 4, 32, 32, 32, 0, False),
    "gqa": FamilyMember("gqa", 8, 2, 40, 40, 24, 0, False),  # Dq = Dk = 40, Dv = 24: not powers of two
    "mqa": FamilyMember("mqa", 4, 1, 64, 64, 64, 0, False),
    "gta": gta_member("gta", 8, 2, 96, 48),  # the paper's Large: d_h 96, d_R 48, so Dq = 48
    "mla": latent_member("mla", 16, 1, 136, 32),  # latent 136 = 128 + 8: a padded last chunk
    "gla2": latent_member("gla2", 16, 2, 64, 16),
    "gla8": latent_member("gla8", 16, 8, 32, 16),
}
