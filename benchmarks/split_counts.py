"""Time the Hopper latent kernel's heuristic config at a ladder of split counts, per case, and say where the
heuristic's split count (planned_num_splits) and the older 75%-fill rule (default_num_splits) land against the best.

    python benchmarks/split_counts.py                      # the built-in cases
    python benchmarks/split_counts.py --cases mla:8x32768x1 mla16:8x8192x1

A case is <spec>:<batch>x<cache>x<query_len>; specs: the paper's presets (mla, gla2, gla8) and mla16 (16 query
heads on one 512-wide latent, a DeepSeek-V2-Lite-sized head count that no shipped table covers). Timing: the tuner's
(tuning/benchmark.py: CUDA-graph replay of calls back to back, rotating input sets past the L2), median us a call.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import torch

from glacompiler.kernels.common.device_limits import DeviceLimits
from glacompiler.kernels.common.splits import HEURISTIC_MAX_SPLITS, default_num_splits, device_multiprocessors
from glacompiler.kernels.latent_hopper.config import BLOCK_N, heuristic_config, programs_per_split, resident_programs
from glacompiler.presets import PAPER_SPECS
from glacompiler.spec import AttentionSpec, ProblemShape
from glacompiler.tuning.benchmark import KernelBenchmark

SPECS = {**{name: PAPER_SPECS[name] for name in ("mla", "gla2", "gla8")},
         "mla16": AttentionSpec.latent(16, 1, 512, 64, paged=True)}
# Where the planner and the 75% rule differ, and shapes no shipped table holds.
DEFAULT_CASES = ("mla:8x32768x1", "mla:1x8192x1", "mla:32x1024x1", "gla2:8x32768x1", "gla2:1x65536x4",
                 "gla2:32x4096x1", "gla8:8x32768x1", "gla8:1x8192x1", "mla16:8x8192x1", "mla16:32x4096x2")
LADDER = (1, 2, 4, 8, 16, 32, 64)
PAGE_SIZE = 64


def parse_case(text: str) -> tuple[str, ProblemShape]:
    name, _, dims = text.partition(":")
    if name not in SPECS:
        raise argparse.ArgumentTypeError(f"case {text!r}: spec must be one of {sorted(SPECS)}")
    try:
        batch, capacity, query_len = (int(part) for part in dims.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"case {text!r}: expected <spec>:<batch>x<cache>x<query_len>") from None
    return name, ProblemShape(batch, query_len, capacity, PAGE_SIZE)


def read_ladder_log(path) -> tuple[str, int, list]:
    """(card, SMs, [(spec name, shape, {split count: us})]) of a log this script printed."""
    text = Path(path).read_text()
    card, multiprocessors = re.search(r"^# (.+), (\d+) SMs", text, re.MULTILINE).groups()
    ladders = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"(\w+) B(\d+) S(\d+) Lq(\d+)", cells[0])
        if match and len(cells) == 8:
            name, batch, capacity, query_len = match.group(1), *map(int, match.groups()[1:])
            times = {int(count): float(us) for count, us in (item.split(":") for item in cells[7].split(","))}
            ladders.append((name, ProblemShape(batch, query_len, capacity, PAGE_SIZE), times))
    return card, int(multiprocessors), ladders


def fill_rule_splits(spec: AttentionSpec, shape: ProblemShape, config, multiprocessors: int) -> int:
    """The split count the heuristic gave before planned_num_splits: the fewest filling 75% of the last wave of
    resident programs (two an SM for one-warpgroup programs), splits of four key blocks at least."""
    programs = programs_per_split(spec, shape, config.row_split, config.one_warpgroup)
    return default_num_splits(programs, shape.capacity, BLOCK_N, multiprocessors,
                              resident=resident_programs(config.one_warpgroup))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", type=parse_case, default=[parse_case(c) for c in DEFAULT_CASES])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (sm_90: the Hopper latent kernel)")
    device = torch.device("cuda")
    limits = DeviceLimits.for_device(device)
    multiprocessors = device_multiprocessors(device)
    print(f"# {torch.cuda.get_device_name()}, {multiprocessors} SMs; us a call (CUDA-graph replay, back to back)")
    print("| case | tile | planned | 75% rule | best | planned / best | 75% rule / best | every count: us |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shape in args.cases:
        spec = SPECS[name]
        planned = heuristic_config(spec, shape, multiprocessors, limits.name)
        old = fill_rule_splits(spec, shape, planned, multiprocessors)
        blocks = max(1, shape.capacity // planned.block_n)  # more splits than the tile's blocks leave some empty
        counts = sorted({count for count in (*LADDER, planned.num_splits, old)
                         if count <= min(HEURISTIC_MAX_SPLITS, blocks)})
        with KernelBenchmark(spec, shape, device, limits) as bench:
            times = {count: bench.time_us(dataclasses.replace(planned, num_splits=count), quick=False)
                     for count in counts}
        best = min(times, key=times.get)
        tile = ("ping-pong" if planned.row_split and planned.warp_specialized else "one warpgroup" if planned.one_warpgroup
                else "shared 64-row")
        ladder = ", ".join(f"{count}: {us:.1f}" for count, us in times.items())
        print(f"| {name} B{shape.batch} S{shape.capacity} Lq{shape.query_len} | {tile} | {planned.num_splits} "
              f"({times[planned.num_splits]:.1f}) | {old} ({times[old]:.1f}) | {best} ({times[best]:.1f}) "
              f"| {times[planned.num_splits] / times[best]:.3f} | {times[old] / times[best]:.3f} | {ladder} |",
              flush=True)


if __name__ == "__main__":
    main()
