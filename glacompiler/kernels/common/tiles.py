"""Tile widths every Triton/Gluon decode kernel obeys."""
from __future__ import annotations

MIN_DOT_WIDTH = 16  # tl.dot and wgmma need every dim >= 16


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def rope_tile_width(rope_dim: int) -> int:
    """The shared rope key's tile: a power of two >= 16 (the padding is masked on load or zero-filled)."""
    return max(MIN_DOT_WIDTH, next_power_of_two(rope_dim))
