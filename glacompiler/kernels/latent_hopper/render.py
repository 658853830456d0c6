"""The Hopper latent kernel's source, rendered from templates/latent_hopper/ (Gluon) per latent spec and tile:
latent_decode.py.jinja, or for the warp-specialised tiles latent_decode_ws.py.jinja (score / value warpgroups),
latent_decode_alt.py.jinja (alternating turns) or latent_decode_pingpong.py.jinja (two row groups taking turns on
the 128-row tile); what they share is in the folder's helpers.py.jinja, bounds.py.jinja,
query_load.py.jinja, first_copies.py.jinja and output_half.py.jinja."""
from __future__ import annotations

import functools
from types import ModuleType

from ...spec import AttentionSpec
from ..common.templates import cached_kernels_version, import_generated, kernels_version, render
from ..common.tiles import rope_tile_width
from .config import RESCALE_SLACK, LatentHopperTile

TEMPLATE = "latent_hopper/latent_decode.py.jinja"
WARP_SPECIALIZED_TEMPLATE = "latent_hopper/latent_decode_ws.py.jinja"
ALTERNATING_TEMPLATE = "latent_hopper/latent_decode_alt.py.jinja"
PING_PONG_TEMPLATE = "latent_hopper/latent_decode_pingpong.py.jinja"
# The worker warpgroup's register budget (its half of the accumulator, or a row group's 64 x 256 one, is 128 a
# thread): the value warpgroup's, the odd one's of the alternating schedule, or the second row group's.
WORKER_WARPGROUP_REGISTERS = 240
# The ping-pong tile's refill warp: page-table reads and TMA copies only. setmaxnreg's floor, 24, leaves each row
# group 240 of the 65,536 (Triton 3.6's ptxas, GLA-2 without a mask: no spills on 64-key blocks, 64 bytes a thread on
# 128-key ones, which still timed fastest).
REFILL_WARPS = 1
REFILL_REGISTERS = 24


def template_for(tile: LatentHopperTile) -> str:
    if tile.ping_pong:
        return PING_PONG_TEMPLATE
    if tile.alternating:
        return ALTERNATING_TEMPLATE
    return WARP_SPECIALIZED_TEMPLATE if tile.warp_specialized else TEMPLATE


def swizzle_bytes(row_bytes: int) -> int:
    """The widest shared-memory swizzle a tile row of this many bytes allows (what TMA and wgmma share)."""
    for width in (128, 64, 32):
        if row_bytes % width == 0:
            return width
    return 0


def render_latent_hopper_kernel(spec: AttentionSpec, tile: LatentHopperTile) -> str:
    rope_width = rope_tile_width(spec.rope_dim)
    return render(
        template_for(tile),
        spec_key=spec.key(),
        row_split=tile.row_split,
        head_dim=spec.head_dim_k,
        rope_dim=spec.rope_dim,
        rope_width=rope_width,
        block_m=tile.block_m,
        block_n=tile.block_n,
        num_stages=tile.num_stages(spec.head_dim_k, rope_width),
        copy_rows=tile.copy_rows,
        scores_ahead=tile.issues_scores_ahead(spec.head_dim_k),
        copies_per_block=tile.block_n // tile.copy_rows,
        out_instr_n=min(256, spec.head_dim_k if tile.row_split else spec.head_dim_k // 2),
        p_swizzle=swizzle_bytes(tile.block_n * 2),
        sanitize_chunk=min(64, spec.head_dim_k),
        num_warps=tile.num_warps,
        rope_in_registers=tile.one_warpgroup,
        lazy_rescale=tile.lazy_rescale,
        rescale_slack=RESCALE_SLACK,
        worker_registers=WORKER_WARPGROUP_REGISTERS,
        refill_warps=REFILL_WARPS,
        refill_registers=REFILL_REGISTERS,
    )


@functools.lru_cache(maxsize=64)
def latent_hopper_module(spec: AttentionSpec, tile: LatentHopperTile) -> ModuleType:
    """The generated Gluon module for a latent spec and tile (cached)."""
    return import_generated(render_latent_hopper_kernel(spec, tile))


@functools.lru_cache(maxsize=None)
def latent_hopper_kernels_version() -> str:
    """Hash of the generated kernels for MLA and GLA-2 on every row tile and small pages (tuned tables record
    it)."""
    mla, gla = AttentionSpec.latent(128, 1, 512, 64, paged=True), AttentionSpec.latent(128, 2, 256, 64, paged=True)
    return cached_kernels_version("latent_hopper", lambda: kernels_version([
        render_latent_hopper_kernel(mla, LatentHopperTile(False)),
        render_latent_hopper_kernel(gla, LatentHopperTile(False)),
        render_latent_hopper_kernel(gla, LatentHopperTile(True, copy_rows=16)),
        render_latent_hopper_kernel(gla, LatentHopperTile(True, one_warpgroup=True)),
        render_latent_hopper_kernel(mla, LatentHopperTile(False, warp_specialized=True)),
        render_latent_hopper_kernel(gla, LatentHopperTile(False, block_n=128, warp_specialized=True)),
        render_latent_hopper_kernel(mla, LatentHopperTile(False, warp_specialized=True, alternating=True)),
    ]))


# A tile form that only some configs run, versioned on its own (a table records a variant's version for the entries
# that run it): the accumulator rescaled lazily on the row-owned tiles.
LAZY_RESCALE_VARIANT = "lazy_rescale"


@functools.lru_cache(maxsize=None)
def lazy_rescale_kernels_version() -> str:
    """Hash of GLA-2's lazily rescaled kernels on both row-owned tiles (entries that run them record it)."""
    gla = AttentionSpec.latent(128, 2, 256, 64, paged=True)
    return cached_kernels_version(f"latent_hopper+{LAZY_RESCALE_VARIANT}", lambda: kernels_version([
        render_latent_hopper_kernel(gla, LatentHopperTile(True, one_warpgroup=True, lazy_rescale=True)),
        render_latent_hopper_kernel(gla, LatentHopperTile(True, lazy_rescale=True)),
    ]))


# The warp-specialised 128-row tile (ping-pong), versioned on its own as the lazy rescale.
PING_PONG_VARIANT = "ping_pong"


@functools.lru_cache(maxsize=None)
def ping_pong_kernels_version() -> str:
    """Hash of GLA-2's ping-pong kernels, plain and lazily rescaled, on 64- and 128-key blocks (entries that run
    them record it)."""
    gla = AttentionSpec.latent(128, 2, 256, 64, paged=True)
    return cached_kernels_version(f"latent_hopper+{PING_PONG_VARIANT}", lambda: kernels_version([
        render_latent_hopper_kernel(gla, LatentHopperTile(True, warp_specialized=True)),
        render_latent_hopper_kernel(gla, LatentHopperTile(True, warp_specialized=True, lazy_rescale=True)),
        render_latent_hopper_kernel(gla, LatentHopperTile(True, warp_specialized=True, block_n=128)),
    ]))
