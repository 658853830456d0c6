"""The portable kernel's tuning space: per spec and shape bucket, the PortableConfig values worth timing (only
values the kernel accepts for that spec, and no tile far larger than the work)."""
from __future__ import annotations

from typing import Sequence

from ...spec import AttentionSpec, ProblemShape
from ..common.search_space import SearchSpace, include_configs, split_choices
from ..common.tiles import MIN_DOT_WIDTH, next_power_of_two
from .config import PAGED_TWO_BUFFER_STAGES, PortableConfig
from .render import dv_part_width

MAX_BLOCK_M = 128
MAX_BLOCK_D = 256
# Smallest program tile kept relative to the packed rows: block_m below rows/8 re-reads each key block from L2
# more than eight times.
ROW_TILE_SPREAD = 8


def _powers_of_two(low: int, high: int) -> list:
    values = []
    value = low
    while value <= high:
        values.append(value)
        value *= 2
    return values


def build_search_space(
    spec: AttentionSpec,
    shape: ProblemShape,
    multiprocessors: int,
    include: Sequence[PortableConfig] = (),
) -> SearchSpace:
    """The space for one (spec, bucket). Every config in `include` (the heuristic default) lies inside it."""
    rows = spec.group_size * shape.query_len
    top_m = min(MAX_BLOCK_M, max(MIN_DOT_WIDTH, next_power_of_two(rows)))
    block_m = _powers_of_two(max(MIN_DOT_WIDTH, top_m // ROW_TILE_SPREAD), top_m)
    block_n = _powers_of_two(MIN_DOT_WIDTH, min(128, max(MIN_DOT_WIDTH, next_power_of_two(shape.capacity))))
    widest = max(spec.head_dim_q, spec.head_dim_v)
    block_d = _powers_of_two(32, min(MAX_BLOCK_D, max(32, next_power_of_two(widest))))
    # Splitting the output dims only pays where the accumulator is wide; parts stay >= 32 columns.
    dv_split = [s for s in (1, 2, 4) if s == 1 or (spec.head_dim_v >= 128 and dv_part_width(spec.head_dim_v, s) >= 32)]
    # 2 warps: a 16-row tile's keys are split over fewer warps, so every block's row max and sum cross less shared
    # memory; on an H200 some GTA rows ran 1-3% faster, others up to 3% slower (benchmarks/RESULTS.md). Only for
    # values of 128 columns or fewer: wider accumulators on 64 threads were not measured.
    num_warps = ([2] if spec.head_dim_v <= 128 else []) + [4, 8] + ([16] if spec.head_dim_v >= 256 else [])
    splits = split_choices(spec, shape, multiprocessors, top_m)
    choices = {
        "block_m": block_m,
        "block_n": block_n,
        "block_d": block_d,
        "dv_split": dv_split,
        "num_splits": splits,
        "num_warps": num_warps,
        # Paged: a key block gets one buffer at 2 to 4 stages, two at 5 (the page-table load takes the stages
        # between: pipeline_stages in config.py). Contiguous caches pipeline, deeper with small key blocks.
        "num_stages": [2, PAGED_TWO_BUFFER_STAGES] if spec.paged else [2, 3, 4],
        "preload_q": [False, True],
        # The splits merged by the kernel's last program of a row block, or by a second launch (one split: neither).
        "fused_combine": [False, True] if max(splits) > 1 else [False],
    }
    return include_configs(choices, include)
