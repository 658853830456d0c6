"""Fit the Hopper latent split planner's costs (kernels/latent_hopper/config.py: split_costs) to ladders that
benchmarks/split_counts.py logged, on the CPU: a grid over the four costs, each scored by how much slower than its
ladder's best the count it picks (among the ladder's counts) ran; then each case held out in turn. Each card's
ladders are fitted apart: the co-resident speed is the card's (split_costs).

    python benchmarks/fit_split_costs.py                                   # every benchmarks/logs/split_counts_*.txt
    python benchmarks/fit_split_costs.py --ladders benchmarks/logs/split_counts_h200_6e414cd.txt
"""
from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

from glacompiler.kernels.common.splits import SplitCosts, modelled_split_time
from glacompiler.kernels.latent_hopper.config import heuristic_config, programs_per_split, resident_programs, split_costs

from split_counts import SPECS, fill_rule_splits, read_ladder_log

LOGS = Path(__file__).resolve().parent / "logs"
PROGRAM = (0, 1, 2, 3, 4, 6)
COMBINE = (0, 1, 2, 3, 4, 6)
COMBINE_PER_WAVE = (0, 1, 2, 3, 4, 6)  # for 256-wide values; scaled by the value width
CO_RESIDENT_SPEED = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


class Case:
    """One ladder: its planner inputs (from the heuristic's tile) and its timings."""

    def __init__(self, name, shape, times, card, multiprocessors):
        self.name, self.shape, self.times = name, shape, times
        self.card, self.multiprocessors = card, multiprocessors
        self.spec = SPECS[name]
        self.tile = heuristic_config(self.spec, shape, multiprocessors, card)
        self.programs = programs_per_split(self.spec, shape, self.tile.row_split, self.tile.one_warpgroup)
        self.resident = resident_programs(self.tile.one_warpgroup)

    def label(self) -> str:
        return f"{self.name} B{self.shape.batch} S{self.shape.capacity} Lq{self.shape.query_len}"

    def loss(self, costs: SplitCosts) -> float:
        """Time at the model's pick over the best timed. The pick is among the counts the ladder timed (the
        planner's own range would pick counts the ladder has no time for)."""
        pick = min(self.times, key=lambda splits: (modelled_split_time(
            splits, self.programs, self.shape.capacity, self.tile.block_n, self.multiprocessors, costs, self.resident), splits))
        return self.times[pick] / min(self.times.values())


def costs_for(spec, program, combine, per_wave, co_resident) -> SplitCosts:
    return SplitCosts(program, combine, per_wave * spec.head_dim_v / 256, co_resident)


def mean_log_loss(cases, grid_point) -> float:
    return sum(math.log(case.loss(costs_for(case.spec, *grid_point))) for case in cases) / len(cases)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladders", nargs="+", type=Path, default=sorted(LOGS.glob("split_counts_*.txt")))
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    by_card: dict[str, tuple[list, list]] = {}  # card -> (its logs' names, its cases)
    for path in args.ladders:
        card, multiprocessors, ladders = read_ladder_log(path)
        names, cases = by_card.setdefault(card, ([], []))
        names.append(path.name)
        cases.extend(Case(name, shape, times, card, multiprocessors) for name, shape, times in ladders)
    if not any(cases for _, cases in by_card.values()):
        parser.error("no ladders read")
    for card, (names, cases) in by_card.items():
        if cases:
            fit_card(card, names, cases, args.top)


def fit_card(card: str, log_names: list, cases: list, top: int) -> None:
    """The grid ranked on one card's cases, then each case held out in turn."""
    grid = list(itertools.product(PROGRAM, COMBINE, COMBINE_PER_WAVE, CO_RESIDENT_SPEED))
    ranked = sorted(grid, key=lambda point: mean_log_loss(cases, point))
    print(f"\n# {card}: {len(cases)} ladders from {', '.join(log_names)}; loss: time at the pick / best")
    print("| program | combine | combine per wave (256 wide) | co-resident speed | mean loss | worst |")
    print("|---|---|---|---|---|---|")
    for point in ranked[:top]:
        losses = [case.loss(costs_for(case.spec, *point)) for case in cases]
        print(f"| {' | '.join(str(value) for value in point)} | {math.exp(mean_log_loss(cases, point)):.4f} "
              f"| {max(losses):.3f} |")
    print("\n| case | shipped costs (the card's) | 75% rule | held out (costs fitted to the others) |")
    print("|---|---|---|---|")
    held_out = []
    for index, case in enumerate(cases):
        others = cases[:index] + cases[index + 1:]
        point = min(grid, key=lambda point: mean_log_loss(others, point)) if others else ranked[0]
        held_out.append(case.loss(costs_for(case.spec, *point)))
        rule = fill_rule_splits(case.spec, case.shape, case.tile, case.multiprocessors)
        rule_loss = case.times[rule] / min(case.times.values()) if rule in case.times else float("nan")
        shipped = case.loss(split_costs(case.spec, case.card))
        print(f"| {case.label()} | {shipped:.3f} | {rule_loss:.3f} | {held_out[-1]:.3f} |")
    print(f"\nheld out: mean loss {math.exp(sum(map(math.log, held_out)) / len(held_out)):.4f}, "
          f"worst {max(held_out):.3f}")


if __name__ == "__main__":
    main()
