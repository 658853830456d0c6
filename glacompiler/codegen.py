"""Render the Jinja2 kernel templates for an AttentionSpec, write the source to a cache directory keyed by
its hash and import it from there (@triton.jit needs a real source file)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Optional

import jinja2

from .config import KernelConfig
from .resources import shipped_folder
from .spec import AttentionSpec

MIN_DOT_WIDTH = 16  # tl.dot needs every dim >= 16


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
    rope_width = max(MIN_DOT_WIDTH, 1 << (spec.rope_dim - 1).bit_length()) if spec.rope_dim else 0
    rope_chunk = DimChunk(0, rope_width, spec.rope_dim) if spec.rope_dim else None
    return q_chunks, v_chunks, rope_chunk


def cache_dir() -> Path:
    root = os.environ.get("GLACOMPILER_CACHE_DIR") or os.path.join(Path.home(), ".cache", "glacompiler")
    return Path(root)


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _load_template(name: str) -> str:
    return shipped_folder("templates").joinpath(name).read_text()


def template_names() -> list[str]:
    root = shipped_folder("templates")
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".jinja"))


# The templates whose knobs (KernelConfig) the tuned tables hold. The Hopper latent kernel is not tuned (its
# tile and split count come from latent_hopper_config), so a change to it leaves the tables current.
TUNED_TEMPLATES = ("decode_attention.py.jinja",)


@functools.lru_cache(maxsize=None)
def templates_version() -> str:
    """Hash of the tuned kernel templates: tables made for other templates are stale."""
    digest = hashlib.sha256()
    for name in TUNED_TEMPLATES:
        digest.update(name.encode())
        digest.update(_load_template(name).encode())
    return digest.hexdigest()[:16]


def render_decode_kernel(spec: AttentionSpec, config: KernelConfig) -> str:
    q_chunks, v_chunks, rope_chunk = plan_chunks(spec, config.block_d, config.dv_split)
    return _environment().get_template("decode_attention.py.jinja").render(
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
    )


def _import_source(source: str) -> ModuleType:
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    module_name = f"glacompiler_generated_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    directory = cache_dir() / "kernels"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{module_name}.py"
    if not path.exists() or path.read_text() != source:
        # Write then rename, so concurrent processes never import a half-written file.
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as handle:
            handle.write(source)
        os.replace(handle.name, path)
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[module_name] = module
    return module


@functools.lru_cache(maxsize=256)
def decode_kernel_module(spec: AttentionSpec, block_d: int, preload_q: bool, dv_split: int) -> ModuleType:
    """The generated module for a spec and the template-level knobs of a config (cached)."""
    config = KernelConfig(block_d=block_d, preload_q=preload_q, dv_split=dv_split)
    return _import_source(render_decode_kernel(spec, config))


# The Hopper latent kernel's tiles: 64 keys per block (one TMA box, one page of a 64-token paged cache; smaller
# pages take one copy each, down to 16 keys: a copy lands on a multiple of the 128-byte swizzle's 8-row period,
# and smaller pages would need more copies than a block is worth). Rows: 64 shared by two warpgroups (each with
# half of a latent up to 512 wide), or, for latents up to 256 wide with many packed rows, 128 split between
# them. Shared-memory stages: what 227 KB holds beside the query tile.
LATENT_HOPPER_BLOCK_N = 64
SM90_SHARED_MEMORY = 232448  # bytes of shared memory a CTA may take on an H100 / H200
SHARED_MEMORY_RESERVE = 2048  # mbarriers, the row-max exchange and the compiler's reduction scratch
LATENT_HOPPER_MIN_PAGE = 16
LATENT_HOPPER_ROW_SPLIT_MAX_WIDTH = 256


def latent_copy_rows(page_size: int) -> int:
    """Keys per TMA copy of a key block: the whole block, or one page where pages are smaller (0: contiguous)."""
    return min(page_size, LATENT_HOPPER_BLOCK_N) if page_size else LATENT_HOPPER_BLOCK_N


@dataclasses.dataclass(frozen=True)
class LatentHopperTile:
    row_split: bool  # 128 rows, 64 per warpgroup; else 64 rows shared by both
    copy_rows: int = LATENT_HOPPER_BLOCK_N  # keys per TMA copy (latent_copy_rows)
    # Issue the next block's score product behind this block's PV product (see the template). None: where
    # it timed faster on an H100, MLA's 512-wide latent.
    scores_ahead: Optional[bool] = None

    def issues_scores_ahead(self, head_dim: int) -> bool:
        return head_dim == 512 and not self.row_split if self.scores_ahead is None else self.scores_ahead

    @property
    def block_m(self) -> int:
        return 128 if self.row_split else 64

    def num_stages(self, head_dim: int, rope_width: int) -> int:
        """Key-block stages: as many as the shared memory holds beside the query tile and P (2 for MLA's
        512-wide latent, 4 for a 256-wide one over 64 rows, 3 over 128), at most 4."""
        element = 2  # bf16 / fp16
        row_bytes = (head_dim + rope_width) * element
        query_and_p = self.block_m * row_bytes + (0 if self.row_split else self.block_m * LATENT_HOPPER_BLOCK_N * element)
        free = SM90_SHARED_MEMORY - SHARED_MEMORY_RESERVE - query_and_p
        return max(2, min(4, free // (LATENT_HOPPER_BLOCK_N * row_bytes)))


def rope_tile_width(rope_dim: int) -> int:
    """The rope key's tile: a power of two >= 16 (padding is masked on load)."""
    return max(MIN_DOT_WIDTH, 1 << (rope_dim - 1).bit_length())


def swizzle_bytes(row_bytes: int) -> int:
    """The widest shared-memory swizzle a tile row of this many bytes allows (what TMA and wgmma share)."""
    for width in (128, 64, 32):
        if row_bytes % width == 0:
            return width
    return 0


def render_latent_hopper_kernel(spec: AttentionSpec, tile: LatentHopperTile) -> str:
    rope_width = rope_tile_width(spec.rope_dim)
    return _environment().get_template("latent_decode_hopper.py.jinja").render(
        spec_key=spec.key(),
        row_split=tile.row_split,
        head_dim=spec.head_dim_k,
        rope_dim=spec.rope_dim,
        rope_width=rope_width,
        block_m=tile.block_m,
        block_n=LATENT_HOPPER_BLOCK_N,
        num_stages=tile.num_stages(spec.head_dim_k, rope_width),
        copy_rows=tile.copy_rows,
        scores_ahead=tile.issues_scores_ahead(spec.head_dim_k),
        copies_per_block=LATENT_HOPPER_BLOCK_N // tile.copy_rows,
        out_instr_n=min(256, spec.head_dim_k if tile.row_split else spec.head_dim_k // 2),
        p_swizzle=swizzle_bytes(LATENT_HOPPER_BLOCK_N * 2),
        sanitize_chunk=min(64, spec.head_dim_k),
    )


@functools.lru_cache(maxsize=64)
def latent_hopper_module(spec: AttentionSpec, tile: LatentHopperTile) -> ModuleType:
    """The generated Gluon module for a latent spec and tile (cached)."""
    return _import_source(render_latent_hopper_kernel(spec, tile))
