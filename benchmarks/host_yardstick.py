"""The host's speed at a moment: nanoseconds an iteration of a fixed pure-Python loop.

A decode step without CUDA graphs is bound by the host (its Python, the dispatcher, the launches), and the host's
speed moves: on one H200 lease this loop took 52 to 101 ns an iteration at different moments, within one process
too, and an un-graphed step moved between 1.51 and 2.23 ms with it (benchmarks/RESULTS.md). The benchmarks print it
beside each un-graphed time, so that a slower figure can be told from a slower host."""
from __future__ import annotations

import time

ITERATIONS = 20000  # about 1-2 ms


def python_ns_per_iteration(iterations: int = ITERATIONS) -> float:
    start = time.perf_counter()
    total = 0
    for index in range(iterations):
        total += index * 3 % 7
    return (time.perf_counter() - start) / iterations * 1e9
