"""How many KV splits a decode launch gets: enough programs to fill the GPU, no split too short to pay."""
from __future__ import annotations

import dataclasses
import functools

import torch

from .device_limits import cuda_index

# Splits a launch may take (configs, the op's num_splits, the tuner's space). The heuristic stops at 64: more
# only paid where very few programs share a long cache, and there not for every kind (H200, one sequence of 64K
# keys: GTA's 4 KV heads 37.9 us at 64 splits, 28.1 at 128; GQA's 8 heads 69.0 at 64, 84.5 at 96, 70.2 at 128;
# benchmarks/RESULTS.md), so larger counts come from tuned tables.
MAX_SPLITS = 128
HEURISTIC_MAX_SPLITS = 64


@functools.lru_cache(maxsize=None)
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_multiprocessors(device: torch.device) -> int:
    """SM count of a CUDA device; a small stand-in for the interpreter on CPU, so splits get exercised."""
    if device.type == "cuda":
        return multiprocessor_count(cuda_index(device))
    return 8


def default_num_splits(programs_per_split: int, capacity: int, block_n: int, multiprocessors: int,
                       resident: int = 1) -> int:
    """The fewest splits that fill the last wave of resident programs (multiprocessors x resident) to 75% or
    more (each split costs a partial write and a combine); never a split shorter than four key blocks."""
    slots = multiprocessors * resident
    longest_useful = max(1, min(HEURISTIC_MAX_SPLITS, capacity // (4 * block_n)))
    for splits in range(1, longest_useful + 1):
        programs = programs_per_split * splits
        waves = -(-programs // slots)
        if programs / (waves * slots) >= 0.75:
            return splits
    return longest_useful


COST_KEYS = 64  # the split planner's unit: one program reading this many keys


@dataclasses.dataclass(frozen=True)
class SplitCosts:
    """A launch's costs beside its keys, in units of one program reading COST_KEYS keys, for planned_num_splits: a
    program's own (its query's load, its output's write), and the combine's where there is more than one split (its
    launch, and its read of the partial outputs per SM-sized set of programs); co_resident_speed: how much faster
    an SM moves two resident programs' keys than one's."""
    program: float
    combine: float
    combine_per_wave: float
    co_resident_speed: float = 1.0


def modelled_split_time(splits: int, programs_per_split: int, capacity: int, block_n: int, multiprocessors: int,
                        costs: SplitCosts, resident: int = 1) -> float:
    """planned_num_splits' model of a launch's time at `splits`, in COST_KEYS reads of one program: the programs an
    SM runs (up to `resident` at a time), each reading its split's keys (a whole number of block_n-key blocks, as the
    kernels cut them) plus its own cost, and the combine's."""
    programs = programs_per_split * splits
    if programs == 0:  # a batch of 0 sequences: nothing runs (and the tie gives 1 split)
        return 0.0
    programs_an_sm = -(-programs // multiprocessors)
    together = min(programs_an_sm, resident)
    speed = costs.co_resident_speed if together > 1 else 1.0
    split_keys = -(-max(1, -(-capacity // splits)) // block_n) * block_n
    time = -(-programs_an_sm // together) * together * (split_keys / COST_KEYS + costs.program) / speed
    if splits > 1:
        time += costs.combine + costs.combine_per_wave * programs / multiprocessors
    return time


def planned_num_splits(programs_per_split: int, capacity: int, block_n: int, multiprocessors: int,
                       costs: SplitCosts, resident: int = 1) -> int:
    """The split count of least modelled time (modelled_split_time) for memory-bound programs, from 1 to one whole
    block_n-key block a split (as the family's longest_useful_splits) or HEURISTIC_MAX_SPLITS. Within a wave more
    splits are shorter ones, so a wave fills all the way (default_num_splits stops at 75%); more programs an SM than
    it holds at once, a program's own cost and the combine's are what stop it. A tie goes to fewer splits, so a
    count whose last splits the kernel would leave empty (the same split length with more programs) is not taken."""
    blocks = max(1, capacity // block_n)
    return min(range(1, min(HEURISTIC_MAX_SPLITS, blocks) + 1),
               key=lambda splits: (modelled_split_time(splits, programs_per_split, capacity, block_n,
                                                       multiprocessors, costs, resident), splits))
