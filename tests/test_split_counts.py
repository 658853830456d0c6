"""planned_num_splits, the Hopper latent heuristic's split count: its model, and its costs against the timings the
shipped tables hold (each entry: the tuned config's and the heuristic config's time, from the tuner's GPU runs)."""
from __future__ import annotations

import dataclasses

import pytest

from glacompiler.kernels import family_named
from glacompiler.kernels.common.splits import HEURISTIC_MAX_SPLITS, SplitCosts, planned_num_splits
from glacompiler.kernels.latent_hopper.config import BLOCK_N, SPLIT_COSTS, programs_per_split
from glacompiler.spec import ProblemShape
from glacompiler.tables.table_file import read_table, shipped_tables_dir

FREE = SplitCosts(program=0.0, combine=0.0, combine_per_wave=0.0)


def test_splits_fill_one_wave_of_programs():
    # 16 programs a split on 132 SMs: 8 splits are 128 programs, one wave of 64-block splits (67 with a program's
    # cost); 7 leave 4 SMs more idle but make every split 74 blocks, and 16 make two waves of 32 (70, and twice the
    # partial outputs to combine).
    assert planned_num_splits(16, 32768, 64, 132, SPLIT_COSTS) == 8
    # Two programs a split (one sequence of MLA): the heuristic's cap, 64 splits, is still one wave.
    assert planned_num_splits(2, 65536, 64, 132, SPLIT_COSTS) == HEURISTIC_MAX_SPLITS


def test_the_combine_keeps_short_caches_whole():
    # 64 programs: 2 splits fill 128 SMs, but 16 blocks of keys save 8 block reads, less than the combine costs.
    assert planned_num_splits(64, 1024, 64, 132, SPLIT_COSTS) == 1
    assert planned_num_splits(64, 65536, 64, 132, SPLIT_COSTS) == 2
    assert planned_num_splits(256, 65536, 64, 132, SPLIT_COSTS) == 1  # two waves already


@pytest.mark.parametrize("capacity, expected", [(64, 1), (128, 2), (1 << 22, HEURISTIC_MAX_SPLITS)])
def test_splits_stay_within_the_keys_and_the_cap(capacity, expected):
    assert planned_num_splits(1, capacity, 64, 132, FREE) == expected


def split_only_pairs(table_name: str) -> list:
    """(programs a split, capacity, faster splits, slower splits) of each Hopper latent entry whose tuned config is
    the heuristic's but for its split count and ran more than 2% faster than it."""
    pairs = []
    family = family_named("latent_hopper")
    for entry in read_table(shipped_tables_dir() / table_name).entries.values():
        if entry.family != "latent_hopper":
            continue
        tuned = family.resolved_config(entry.config, entry.spec)
        default = family.resolved_config(entry.default_config, entry.spec)
        if (dataclasses.replace(tuned, num_splits=1) != dataclasses.replace(default, num_splits=1)
                or tuned.num_splits == default.num_splits or entry.default_us < 1.02 * entry.tuned_us):
            continue
        shape = ProblemShape(entry.bucket.batch, entry.bucket.query_len, entry.bucket.capacity, entry.page_size)
        programs = programs_per_split(entry.spec, shape, tuned.row_split, tuned.one_warpgroup)
        pairs.append((programs, shape.capacity, tuned.num_splits, default.num_splits))
    return pairs


def modelled_time(programs: int, capacity: int, splits: int, costs: SplitCosts, multiprocessors: int = 132) -> float:
    """planned_num_splits' objective for one count: the count it returns for a ladder of just this one."""
    blocks = -(-capacity // BLOCK_N)
    waves = -(-programs * splits // multiprocessors)
    time = waves * (-(-blocks // splits) + costs.program)
    return time + (costs.combine + costs.combine_per_wave * programs * splits / multiprocessors if splits > 1 else 0)


@pytest.mark.parametrize("table_name", ["NVIDIA_H200.json", "NVIDIA_H100_80GB_HBM3.json"])
def test_split_costs_rank_the_tables_measured_pairs(table_name):
    """SPLIT_COSTS were fitted to these pairs: the model must rank every one as the GPU did (the 75% rule,
    default_num_splits, ranked none of them: each pair's slower count is its pick)."""
    pairs = split_only_pairs(table_name)
    assert len(pairs) >= 8, "the shipped table lost its measured split pairs"
    wrong = [pair for pair in pairs if not modelled_time(*pair[:2], pair[2], SPLIT_COSTS)
             < modelled_time(*pair[:2], pair[3], SPLIT_COSTS)]
    assert not wrong, f"(programs, capacity, faster, slower) the model ranks the other way: {wrong}"


def test_modelled_time_is_the_planners_objective():
    # The test's restatement of the objective picks what the planner picks, over a spread of shapes.
    for programs in (1, 2, 8, 16, 33, 64, 256):
        for capacity in (256, 1024, 8192, 65536):
            blocks = -(-capacity // BLOCK_N)
            ladder = range(1, min(HEURISTIC_MAX_SPLITS, blocks) + 1)
            best = min(ladder, key=lambda splits: (modelled_time(programs, capacity, splits, SPLIT_COSTS), splits))
            assert planned_num_splits(programs, capacity, BLOCK_N, 132, SPLIT_COSTS) == best
