"""How many KV splits a decode launch gets: enough programs to fill the GPU, no split too short to pay."""
from __future__ import annotations

import functools

import torch

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
        return multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device())
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
