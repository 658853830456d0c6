"""The portable split-KV kernel's source: head dims cut into power-of-two chunks (the tied state's K chunks
reused as V), rendered from templates/portable/decode_attention.py.jinja per spec and template knobs."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from types import ModuleType
from typing import Optional

from ...spec import AttentionSpec
from ..common.templates import cached_kernels_version, import_generated, kernels_version, render
from ..common.tiles import MIN_DOT_WIDTH, rope_tile_width
from .config import PortableConfig

TEMPLATE = "portable/decode_attention.py.jinja"
# Splits whose partials the fused combine's merging program loads at once (its loop over splits, unrolled): each
# split otherwise costs a round trip to L2 of its own.
MERGE_UNROLL = 4


@dataclasses.dataclass(frozen=True)
class DimChunk:
    """A slice [start, start + valid) of a head dim, loaded as a power-of-two tile of `width` columns."""

    start: int
    width: int
    valid: int
    reuse: Optional[int] = None  # V chunk only: index of the Q/K chunk holding the same columns

    @property
    def masked(self) -> bool:
        return self.valid < self.width

    def __repr__(self) -> str:
        return f"[{self.start}:{self.start + self.valid}]/{self.width}"


def split_head_dim(start: int, stop: int, max_width: int) -> list[DimChunk]:
    """Cover [start, stop) with power-of-two tiles of at most max_width, largest first; the last one may be
    padded (masked) up to the minimum dot width."""
    chunks = []
    while start < stop:
        remaining = stop - start
        width = min(max_width, 1 << (remaining.bit_length() - 1))
        width = max(width, MIN_DOT_WIDTH)
        valid = min(width, remaining)
        chunks.append(DimChunk(start, width, valid))
        start += valid
    return chunks


def dv_part_width(head_dim_v: int, dv_split: int) -> int:
    """Output dims per program when Dv is split over dv_split programs (a multiple of 16)."""
    return -(-head_dim_v // (dv_split * MIN_DOT_WIDTH)) * MIN_DOT_WIDTH


def plan_chunks(spec: AttentionSpec, block_d: int, dv_split: int = 1) -> tuple[list[DimChunk], list[DimChunk], Optional[DimChunk]]:
    """Q/K chunks over [0, Dq), V chunks over [0, Dv) and the rope chunk. When V is the tied state, its
    chunks over [0, Dq) are the K chunks themselves: each key block is loaded once for both products.
    With a Dv split, V chunks cover one program's part (offset at run time) and are loaded separately."""
    q_chunks = split_head_dim(0, spec.head_dim_q, block_d)
    if dv_split > 1:
        v_chunks = split_head_dim(0, dv_part_width(spec.head_dim_v, dv_split), block_d)
    elif spec.tied:
        v_chunks = [dataclasses.replace(c, reuse=i) for i, c in enumerate(q_chunks)]
        v_chunks += split_head_dim(spec.head_dim_q, spec.head_dim_v, block_d)
    else:
        v_chunks = split_head_dim(0, spec.head_dim_v, block_d)
    # The rope key is short (<= 64): one tile, padded to a power of two.
    rope_chunk = DimChunk(0, rope_tile_width(spec.rope_dim), spec.rope_dim) if spec.rope_dim else None
    return q_chunks, v_chunks, rope_chunk


def render_decode_kernel(spec: AttentionSpec, config: PortableConfig, signal_dependents: bool = False) -> str:
    """The kernel's source; with config.fused_combine, the variant whose last program of a row block merges the
    splits (its other kernels render as though the choice did not exist: tables tuned on them stay current)."""
    q_chunks, v_chunks, rope_chunk = plan_chunks(spec, config.block_d, config.dv_split)
    return render(
        TEMPLATE,
        spec_key=spec.key(),
        q_chunks=q_chunks,
        v_chunks=v_chunks,
        rope_chunk=rope_chunk,
        tied=spec.tied,
        paged=spec.paged,
        preload_q=config.preload_q,
        dv_split=config.dv_split,
        dv_part=dv_part_width(spec.head_dim_v, config.dv_split),
        head_dim_v=spec.head_dim_v,
        dot_precision=', input_precision="ieee"' if spec.dtype == "float32" else "",
        fused_combine=bool(config.fused_combine),
        merge_unroll=MERGE_UNROLL,
        signal_dependents=signal_dependents,  # renders nothing when off: the family's version stays
    )


@functools.lru_cache(maxsize=256)
def decode_kernel_module(spec: AttentionSpec, block_d: int, preload_q: bool, dv_split: int,
                         fused_combine: bool = False, signal_dependents: bool = False) -> ModuleType:
    """The generated module for a spec and the template-level knobs of a config (cached)."""
    # (two splits: a config of one split that fuses is the plain one)
    config = PortableConfig(block_d=block_d, preload_q=preload_q, dv_split=dv_split, num_splits=2,
                            fused_combine=fused_combine)
    return import_generated(render_decode_kernel(spec, config, signal_dependents))


# Template knobs and specs whose generated kernels define the family's version: together they take every
# branch of the template (separate / tied / GTA's extra V chunks, rope or not, paged or not, Q preloaded or
# reloaded, split output dims, fp32's IEEE products).
_VERSION_SPECS = (
    AttentionSpec.grouped(32, 8, 128, paged=True),
    AttentionSpec.grouped(8, 2, 40, 24, dtype="float32"),
    AttentionSpec.grouped_tied(16, 4, 128, 64),
    AttentionSpec.latent(128, 2, 256, 64, paged=True),
)
_VERSION_KNOBS = (PortableConfig(), PortableConfig(preload_q=False, dv_split=2))
FUSED_COMBINE_VARIANT = "fused_combine"


@functools.lru_cache(maxsize=None)
def portable_kernels_version() -> str:
    """Hash of the generated kernels over _VERSION_SPECS x _VERSION_KNOBS (tuned tables record it)."""
    return cached_kernels_version("portable", lambda: kernels_version(
        render_decode_kernel(spec, knobs) for spec in _VERSION_SPECS for knobs in _VERSION_KNOBS))


@functools.lru_cache(maxsize=None)
def fused_combine_kernels_version() -> str:
    """The same over the fused-combine variant, which takes its split weights from split_merge.py (entries that
    fuse record both)."""
    def compute() -> str:
        fused = [dataclasses.replace(knobs, num_splits=2, fused_combine=True) for knobs in _VERSION_KNOBS]
        sources = [render_decode_kernel(spec, knobs) for spec in _VERSION_SPECS for knobs in fused]
        # (read, not imported: triton must not load before the interpreter is chosen)
        merge = Path(__file__).resolve().parent.parent / "common" / "split_merge.py"
        return kernels_version([*sources, merge.read_text()])

    return cached_kernels_version(f"portable+{FUSED_COMBINE_VARIANT}", compute)
