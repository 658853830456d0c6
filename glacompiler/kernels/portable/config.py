"""PortableConfig: the knobs of the portable split-KV kernels, and the heuristic that picks them untuned."""
from __future__ import annotations

import dataclasses
from typing import Optional

from ...spec import AttentionSpec, ProblemShape
from ..common.splits import MAX_SPLITS, default_num_splits
from ..common.tiles import next_power_of_two


@dataclasses.dataclass(frozen=True)
class PortableConfig:
    block_m: int = 64  # packed (query head, draft token) rows per program: the M of tl.dot
    block_n: int = 32  # keys per block
    block_d: int = 64  # widest head-dim chunk the template unrolls (Q/K and V products)
    num_splits: int = 1  # KV splits (flash-decoding); 1 writes the output directly
    num_warps: int = 4
    num_stages: int = 2
    preload_q: bool = True  # keep Q in registers for the whole loop, or reload it (L1/L2) per key block
    dv_split: int = 1  # programs sharing one row block's output dims (narrower accumulators)
    # With splits: the last program of a row block to finish merges its splits, instead of a combine launch. None:
    # an open choice (a table entry tuned before it existed), made by fused_combine_default.
    fused_combine: Optional[bool] = None

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_d"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        if not 1 <= self.num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits must lie in [1, {MAX_SPLITS}], got {self.num_splits}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be a power of two up to 16, got {self.num_warps}")
        if self.dv_split not in (1, 2, 4):
            raise ValueError(f"dv_split must be 1, 2 or 4, got {self.dv_split}")
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages must lie in [1, 8], got {self.num_stages}")
        if self.num_splits == 1 and self.fused_combine is not False:
            # One split has nothing to merge: one config, not two, and no choice left open.
            object.__setattr__(self, "fused_combine", False)

    def to_dict(self) -> dict:
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "PortableConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def rows_per_kv_head(spec: AttentionSpec, query_len: int) -> int:
    return spec.group_size * query_len


def resident_programs(block_m: int, num_warps: int) -> int:
    """Programs an SM keeps in flight at once for a tile shape: decode streams memory, so enough of them must
    overlap to hide its latency. From the H100 table (tuned_configs/): 16-32 row tiles on 4 warps run best
    with about 4 per SM (GTA and GQA tuned to 384-512 programs on 132 SMs), 64-row tiles on 4 warps with 2,
    8-warp tiles with 1."""
    if num_warps >= 8:
        return 1
    return 4 if block_m <= 32 else 2


def heuristic_config(spec: AttentionSpec, batch: int, capacity: int, query_len: int, multiprocessors: int,
                     page_size: int = 0) -> PortableConfig:
    """Tile choices measured best on an H100 (benchmarks/RESULTS.md) for each shape class; the tuned
    tables refine them per GPU and bucket. page_size: keys per page of a paged cache (0: contiguous, or not
    known)."""
    rows = rows_per_kv_head(spec, query_len)
    if spec.head_dim_v >= 512:
        # MLA-wide latents: one program per 128 packed rows, so each key block is read once. 32-key blocks
        # keep all K chunks in shared memory; Q is reloaded per block (it does not fit beside them).
        block_m = min(128, max(16, next_power_of_two(rows)))
        block_n, block_d, num_warps, preload_q = 32, 64, 8 if block_m >= 128 else 4, False
    elif spec.head_dim_v >= 256 and rows > 64:
        # GLA-style latents with many packed rows: two warpgroups, each with a 64-row accumulator.
        block_m, block_n, block_d, num_warps, preload_q = 128, 64, 256, 8, True
    elif spec.head_dim_v >= 256:
        # One warpgroup over 64 rows: with M = 64, more warps only split the product and run slower.
        block_m = min(64, max(16, next_power_of_two(rows)))
        block_n, block_d, num_warps, preload_q = latent_block_n(spec, block_m, page_size), 64, 4, True
    else:
        block_m = min(64, max(16, next_power_of_two(rows)))
        block_n, block_d, num_warps, preload_q = 64, 64, 4, spec.head_dim_q + spec.rope_dim <= 256
    programs = batch * spec.num_kv_heads * -(-rows // block_m)
    num_splits = default_num_splits(programs, capacity, block_n, multiprocessors,
                                    resident_programs(block_m, num_warps))
    return PortableConfig(
        block_m=block_m,
        block_n=block_n,
        block_d=block_d,
        num_splits=num_splits,
        num_warps=num_warps,
        num_stages=pipeline_stages(spec, block_n, num_splits),
        preload_q=preload_q,
        # The separate combine launch: the fused merge pays only where the splits are few (benchmarks/RESULTS.md);
        # the tuner weighs both.
        fused_combine=False,
    )


LATENT_WIDE_KEY_BLOCK_ROWS = 32  # packed rows up to which latents of 256 take 64-key blocks (latent_block_n)
WIDE_KEY_BLOCK = 64


def latent_block_n(spec: AttentionSpec, block_m: int, page_size: int = 0) -> int:
    """Keys per block of the one-warpgroup tiles of values 256 or more wide. MLA/GLA latents of 256 in 2-byte elements
    take 64 at up to 32 packed rows, contiguous or in pages of whole blocks: on an H200, bf16 latents of 256 (+ rope
    64) at 8 to 32 packed rows took 14-23% less time with 64 keys than with 32, at 2 stages: 0.96-0.98 of the
    cache's floor at B64 S8K and B128 S4K, contiguous and in pages of 64, and 0.90 for GLA-8's 16 rows (pages of
    64, B32 S4K); 64-row tiles took 17% more (benchmarks/logs/latent_portable_block_n_h200.txt). That is the kernel
    a compiled graph launches for latent sites without CUDA graphs (compiler/rewrite/graph_launches.py). The rest
    keeps 32, unmeasured with 64: other head layouts of these widths (GQA of head dim 256, wider latents), fp32
    (blocks twice the bytes), and pages smaller than a block (the kernel then looks up a page per key)."""
    measured = (spec.kind in ("mla", "gla") and spec.head_dim_v == 256 and spec.torch_dtype.itemsize == 2
                and (page_size == 0 or page_size % WIDE_KEY_BLOCK == 0))
    return WIDE_KEY_BLOCK if measured and block_m <= LATENT_WIDE_KEY_BLOCK_ROWS else 32


def fused_combine_default(spec: AttentionSpec, config: PortableConfig) -> bool:
    """How a config that leaves the choice open (None: a table entry tuned before it existed) merges its splits: with
    the combine launch, as it was tuned."""
    return False


DEEP_PIPELINE_TILE_BYTES = 16 * 1024  # K + V bytes of a key block up to which deeper pipelines paid (H200)
# ... and up to which 4 stages paid where one program walks a whole contiguous cache (no KV split): head dim 128's
# 32 KiB blocks of 64 keys took 15% less time with 4 than with 2 (GQA 32/8 at B128 S8K on an H200).
WHOLE_CACHE_DEEP_PIPELINE_TILE_BYTES = 32 * 1024
# A paged block's address comes from a page-table load in the loop, which the pipeliner runs stages ahead of the
# block's own loads: 2 to 4 stages leave the block one shared-memory buffer (its next load waits for this one's
# products), 5 give it two (resource_model.pipeline_buffers).
PAGED_TWO_BUFFER_STAGES = 5


def pipeline_stages(spec: AttentionSpec, block_n: int, num_splits: int) -> int:
    """Software pipeline depth. On an H200, contiguous GQA/MHA caches of head dim 64 in bf16 (K and V: 16 KiB a
    64-key block) took 2-19% less time with 3 stages than with 2, and up to 25% less with 4 where one program
    walks its sequence's whole cache (no KV split); head dim 128 took up to 14% more with 3 where the cache is
    split, but 15% less with 4 where it is not (B128 S8K: 959 us against 1122; benchmarks/RESULTS.md); on a GPU
    whose shared memory is too small, an op call steps the stages down at launch (a graph whose Inductor-launched
    kernel fails to compile is compiled again with op calls). Paged caches: GTA's tied blocks (128 + 64 wide,
    64 keys) took 3-9% less time with two buffers (5 stages) than with one (2) on 7 of issue 13's 8 grid rows,
    GQA's (head dim 128, K and V) 10-17% more at the same tile: its blocks are larger, and the buffers cost it
    programs per SM (benchmarks/logs/paged_stages_probe_h200.txt). Contiguous GTA caches (tied 128 + 64, bf16, the
    layout of transformers' StaticCache) took 2.5-24% less time with 3 stages than with 2 on the heuristic's
    16-row tiles at issue 13's grid shapes (Lq 1 and 4) and at B64 S8K, and 0.4-34% more with 4 or 5 than with 3
    (benchmarks/logs/gta_contiguous_stages_h200.txt); not measured: fp16, 64-row tiles (Lq 16: 3 stages leave
    an H200 SM two programs, not three), a masked call's sparse pass (maskless only was timed). Latent layouts
    keep 2 until measured."""
    block_bytes = block_n * (spec.head_dim_k + spec.head_dim_v + spec.rope_dim) * spec.torch_dtype.itemsize
    # GTA's tied blocks in two-byte elements: the ones measured deeper (fp32's would pass the shared memory of
    # smaller GPUs with two paged buffers; the latents' were not measured).
    measured_gta = spec.kind == "gta" and spec.head_dim_v < 256 and spec.torch_dtype.itemsize == 2
    if spec.paged:
        return PAGED_TWO_BUFFER_STAGES if measured_gta else 2
    if spec.tied:
        return 3 if measured_gta else 2
    if num_splits == 1 and (block_bytes <= DEEP_PIPELINE_TILE_BYTES or (
            spec.torch_dtype.itemsize == 2 and block_bytes <= WHOLE_CACHE_DEEP_PIPELINE_TILE_BYTES)):
        return 4  # (fp32's 32 KiB blocks were not measured deeper)
    return 3 if block_bytes <= DEEP_PIPELINE_TILE_BYTES else 2


def programs_per_split(spec: AttentionSpec, shape: ProblemShape, config: PortableConfig) -> int:
    """Programs a launch runs per KV split: sequences x KV heads x row blocks x output-dim parts."""
    rows = rows_per_kv_head(spec, shape.query_len)
    return shape.batch * spec.num_kv_heads * -(-rows // config.block_m) * config.dv_split
