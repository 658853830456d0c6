"""Resource model of the portable split-KV kernel: shared memory and registers of one config, written as sympy expressions
of the tile parameters and head dims, checked against the GPU's limits so that configs which cannot launch (or
would spill heavily) are pruned before anything compiles.

Calibrated against Triton's own numbers: the kernels of the five paper specs compiled for sm_90 by Triton 3.9
(triton.compile with a GPUTarget, no GPU needed) over a grid of about 900 configs, reading
compiled.metadata.shared and the cubin's register and stack use. The shared-memory model put every config
on the right side of the 227 KiB limit and was exact for 3 configs in 4 (within 10% for 9 in 10);
tests/test_resource_model.py keeps spot checks. What the numbers showed:
  * Q (with the rope part) sits in shared memory once per program (the loads are loop-invariant, so
    `preload_q` changes nothing here).
  * Key tiles: when V is the tied state and read whole (dv_split 1), every K chunk stays live until the PV
    product reuses it, so all of them (and the rope tile) are in shared memory at once; otherwise one chunk at
    a time, plus the probabilities P as the A operand of the PV product.
  * The one miss: latent specs with block_m <= 32, block_n <= 64 and chunks wider than 64 take block_n x
    (chunk - 64) x 2 bytes more (8 KiB at most in the grid, far from any limit there); not modelled, since
    larger tiles with the same chunks do not show it and charging it everywhere would prune configs that
    launch (MLA block_m 64 x block_n 128 with 128-wide chunks uses 216 KiB, not 232).
  * Contiguous caches are pipelined: num_stages - 1 buffers of a key block's loads (every K/V chunk not reused,
    and the rope tile), beside Q and the probabilities; with 64 or more rows (warpgroup MMA tiles) Triton stages
    the loads once more, by a fitted term: block_n x (loaded width - block_m). Fitted on 53 configs of GQA (head
    dims 64 and 128), MHA (64) and GTA (128 + 64, 64 + 32) in bf16, Q preloaded, block_m 16 to 128, 1 to 3
    pipeline buffers, 4 warps (15 again at 2 and 8 warps: the same bytes), exact for every one
    (benchmarks/logs/resource_model_contiguous_fit_sm90_triton39.txt).
  * Paged caches are pipelined too, with the same terms, but a key block's address comes from a page-table load
    in the loop, one level of indirection: the pipeliner splits the stages between the two loads, so a block
    gets (num_stages - 1) // 2 buffers and at least one (2 to 4 stages: one, 5 and 6: two, 7: three). On Triton
    3.6 and 3.9, sm_90, for GQA, GTA, GLA and MLA specs with Q preloaded (2 to 7 stages, block_m 16 to 128, pages
    of 16 and 64 keys): the spot checks of tests/test_resource_model.py exact to the page ids' few bytes, 165 of
    185 random maskless configs within 1 KiB and all within 15%; the misses: block_m 32 up to 14% over, 128-key
    blocks at 5 stages up to 2 KiB under (`benchmarks/pipelined_loads.py --page-size 64` prints both columns,
    benchmarks/logs/resource_model_paged_sm90.txt). The sparse pass of a masked call is not modelled.
  * Q reloaded per block and 4-byte elements (outside the fitted domain) take the same terms: on Triton 3.6 they
    are exact for bf16 with Q reloaded and for fp32 tiles of up to 32 rows, and over by up to 29% for fp32 tiles
    of 64 rows or more; Triton 3.9 allocates less for Q-reloaded tiles of 64+ rows (the model up to 3.5x over
    there), never more (48 random configs, contiguous and paged, 2 to 5 stages:
    benchmarks/logs/resource_model_outside_fit_sm90.txt). Over is the safe side: a config that cannot launch is
    pruned, not compiled and failed. One stage keeps the older model of "Key tiles" (no pipeline buffer), and a
    config that still does not fit fails its trial or steps down its stages at launch.
  * Registers: the fp32 accumulators (block_m x the program's Dv), the scores and probabilities
    (block_m x block_n), every K/V chunk of one key block on its way to shared memory (the compiler issues all
    of a block's loads before the first product), and a fixed base for addresses and indices.
    Spilling is not fatal here: the MLA heuristic (block_m 128, 8 warps; the fastest of the H100 sweep behind
    heuristic_config in config.py) spills about 1.3 KB per thread, estimate 1.4x the register file.
    Only estimates over SPILL_TOLERANCE x the file are pruned: each of the 44 grid configs there spilled 1.6
    to 7.4 KB per thread, and none that spilled less was pruned (half of the configs spilling more than
    1.5 KB are not caught: the compiler's worst cases are not a smooth function of the tiles).
Configs that still fail (a newer Triton allocating differently) are caught as failed trials by the study.
"""
from __future__ import annotations

import dataclasses

import sympy
import torch

from ...spec import AttentionSpec
from ..common.device_limits import DeviceLimits
from ..common.tiles import next_power_of_two
from .config import PortableConfig
from .render import MERGE_UNROLL, plan_chunks

# Tile parameters and the head-dim widths of the chunk plan (power-of-two padded), as sympy symbols.
BLOCK_M, BLOCK_N, NUM_WARPS = sympy.symbols("block_m block_n num_warps", positive=True, integer=True)
Q_WIDTH, ROPE_WIDTH, LIVE_KEY_WIDTH, LOADED_WIDTH, ACC_WIDTH = sympy.symbols(
    "q_width rope_width live_key_width loaded_width acc_width", nonnegative=True, integer=True)
ELEMENT_BYTES, P_IN_SHARED, PIPELINED, WARPGROUP_ROWS, BUFFERS, FUSED, SPLITS_POW2 = sympy.symbols(
    "element_bytes p_in_shared pipelined warpgroup_rows buffers fused splits_pow2", nonnegative=True, integer=True)
# BUFFERS: shared-memory copies of a key block's loads in flight (pipeline_buffers); FUSED: 1 where the kernel merges
# its splits itself (a fused combine), whose tail loads every split's LSE at once (SPLITS_POW2 per row)

THREADS_PER_WARP = 32
SPILL_TOLERANCE = 2.0
# Registers a thread needs beyond the tiles: pointers, offsets, masks, loop state (fitted: Triton 3.x, sm_90).
REGISTER_BASE = 40

UNPIPELINED_KEY_TILES = BLOCK_N * LIVE_KEY_WIDTH + P_IN_SHARED * BLOCK_M * BLOCK_N
PIPELINED_KEY_TILES = (BLOCK_M * BLOCK_N + BUFFERS * BLOCK_N * LOADED_WIDTH
                       + WARPGROUP_ROWS * BLOCK_N * sympy.Max(0, LOADED_WIDTH - BLOCK_M))
SHARED_BYTES = ELEMENT_BYTES * (
    BLOCK_M * (Q_WIDTH + ROPE_WIDTH) + (1 - PIPELINED) * UNPIPELINED_KEY_TILES + PIPELINED * PIPELINED_KEY_TILES
)
REGISTERS_PER_THREAD = sympy.Max(
    BLOCK_M * ACC_WIDTH  # fp32 accumulators
    + BLOCK_M * BLOCK_N * (1 + ELEMENT_BYTES / 4)  # fp32 scores and the low-precision probabilities
    + BLOCK_N * LOADED_WIDTH * ELEMENT_BYTES / 4,  # one key block's K/V chunks between global and shared memory
    # A fused combine's tail, after the loop: the row block's fp32 merged outputs, the partials of the splits
    # whose loads are in flight at once (the unrolled loop), and the block's split LSEs. (On sm_90, Triton 3.9,
    # 16 rows on 4 warps: GTA 82-163 registers at 8-128 splits against 80 without; a 512-wide latent 193-255.)
    FUSED * BLOCK_M * ((1 + MERGE_UNROLL) * ACC_WIDTH + SPLITS_POW2),
) / (THREADS_PER_WARP * NUM_WARPS) + REGISTER_BASE

_SYMBOLS = (BLOCK_M, BLOCK_N, NUM_WARPS, Q_WIDTH, ROPE_WIDTH, LIVE_KEY_WIDTH, LOADED_WIDTH, ACC_WIDTH,
            ELEMENT_BYTES, P_IN_SHARED, PIPELINED, WARPGROUP_ROWS, BUFFERS, FUSED, SPLITS_POW2)
_shared_bytes = sympy.lambdify(_SYMBOLS, SHARED_BYTES, "math")
_registers_per_thread = sympy.lambdify(_SYMBOLS, REGISTERS_PER_THREAD, "math")


def element_bytes(spec: AttentionSpec) -> int:
    return torch.empty((), dtype=spec.torch_dtype).element_size()


def chunk_widths(spec: AttentionSpec, config: PortableConfig) -> dict:
    """The symbol values that come from the template's chunk plan for this spec and config."""
    q_chunks, v_chunks, rope_chunk = plan_chunks(spec, config.block_d, config.dv_split)
    rope_width = rope_chunk.width if rope_chunk else 0
    q_width = sum(c.width for c in q_chunks)
    loaded = [c.width for c in q_chunks] + [c.width for c in v_chunks if c.reuse is None] + [rope_width]
    reused = any(c.reuse is not None for c in v_chunks)
    # Tied V read whole: every key chunk stays for the PV product. Otherwise one chunk at a time.
    live_keys = q_width + rope_width if reused else max(loaded)
    return {
        Q_WIDTH: q_width,
        ROPE_WIDTH: rope_width,
        LIVE_KEY_WIDTH: live_keys,
        LOADED_WIDTH: sum(loaded),
        ACC_WIDTH: sum(c.width for c in v_chunks),
        P_IN_SHARED: 0 if reused else 1,
    }


@dataclasses.dataclass(frozen=True)
class ResourceEstimate:
    shared_bytes: int
    registers_per_thread: float
    num_warps: int

    def register_limit(self, limits: DeviceLimits) -> float:
        """Registers a thread can hold without spilling (the per-thread cap, or the file shared by the threads)."""
        threads = THREADS_PER_WARP * self.num_warps
        return min(limits.max_registers_per_thread, limits.registers_per_block // threads)

    def excess(self, limits: DeviceLimits) -> dict:
        """Relative excess over each limit: > 0 means the config cannot launch (shared memory) or would spill
        several KB per thread (registers)."""
        return {
            "shared": self.shared_bytes / limits.shared_bytes_per_block - 1,
            "registers": self.registers_per_thread / (SPILL_TOLERANCE * self.register_limit(limits)) - 1,
        }

    def worst_excess(self, limits: DeviceLimits) -> float:
        return max(self.excess(limits).values())

    def fits(self, limits: DeviceLimits) -> bool:
        return self.worst_excess(limits) <= 0

    def describe(self, limits: DeviceLimits) -> str:
        return (f"shared {self.shared_bytes / 1024:.0f}/{limits.shared_bytes_per_block / 1024:.0f} KiB, "
                f"registers {self.registers_per_thread:.0f} per thread for {self.register_limit(limits):.0f} "
                f"(pruned over {SPILL_TOLERANCE:g}x)")


def pipeline_buffers(spec: AttentionSpec, num_stages: int) -> int:
    """Shared-memory buffers Triton gives a key block's loads: paged addresses come from a load in the loop,
    which takes half the stages ahead of the block's own."""
    if spec.paged:
        return max(1, (num_stages - 1) // 2)
    return num_stages - 1


def estimate_resources(spec: AttentionSpec, config: PortableConfig) -> ResourceEstimate:
    values = chunk_widths(spec, config)
    values.update({BLOCK_M: config.block_m, BLOCK_N: config.block_n, NUM_WARPS: config.num_warps,
                   ELEMENT_BYTES: element_bytes(spec),
                   PIPELINED: 1 if config.num_stages >= 2 else 0,  # one stage: no pipeline buffer (docstring)
                   WARPGROUP_ROWS: 1 if config.block_m >= 64 else 0,
                   BUFFERS: pipeline_buffers(spec, config.num_stages),
                   FUSED: 1 if config.fused_combine else 0,  # (False with one split)
                   SPLITS_POW2: next_power_of_two(config.num_splits)})
    arguments = [values[symbol] for symbol in _SYMBOLS]
    return ResourceEstimate(
        shared_bytes=int(_shared_bytes(*arguments)),
        registers_per_thread=float(_registers_per_thread(*arguments)),
        num_warps=config.num_warps,
    )
