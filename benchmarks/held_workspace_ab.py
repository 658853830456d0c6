"""Host time per eager call with what it does not return held between calls (its thread's stream workspace,
kernels/common/split_workspace.py: a split call's partials, and the LSE the wrapper drops without return_lse)
against the same calls allocating everything, in one process: bursts of back-to-back calls alternate between the
two (the order flipped each round), so a host that drifts moves both alike.

    python benchmarks/held_workspace_ab.py [--rounds 21] [--calls 300]

Rows: host_ab.py's wrapper rows and split rows, under no_grad (the wrapper's direct path, as a decode step's; an op
row through the dispatcher holds nothing, so its difference is noise), every row warmed first. Each row gives both
sides' fastest and median burst and the median of the rounds' differences (allocated - held)."""
from __future__ import annotations

import argparse
import statistics

import torch

from glacompiler.kernels.common.split_buffers import SplitBuffers

from host_ab import burst_us, rows


def _allocated(buffers: SplitBuffers, q, hold: bool, keep_lse: bool = True) -> tuple:
    """What every call did before the workspace: all four buffers allocated."""
    return buffers.allocate(q)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21, help="bursts per side and row")
    parser.add_argument("--calls", type=int, default=300, help="calls per burst")
    args = parser.parse_args()
    held = SplitBuffers.allocate_for_call
    print(f"{'row':<40} {'allocated us (min / median)':>28} {'held us (min / median)':>24} {'allocated - held':>17}")
    with torch.no_grad():
        chosen = [(name, fn) for name, fn in rows(torch.device("cuda")) if "wrapper" in name or "splits" in name]
        for _, fn in chosen:  # every row warmed first (host_ab's way): the host's clocks and caches, not the order
            for _ in range(200):
                fn()
        for name, fn in chosen:
            times = {"allocated": [], "held": []}
            try:
                for round_index in range(args.rounds):
                    for side in (("held", "allocated") if round_index % 2 else ("allocated", "held")):
                        SplitBuffers.allocate_for_call = held if side == "held" else _allocated
                        times[side].append(burst_us(fn, args.calls, torch.cuda.synchronize))
            finally:
                SplitBuffers.allocate_for_call = held
            torch.cuda.synchronize()
            saved = statistics.median(a - h for a, h in zip(times["allocated"], times["held"]))
            cells = [f"{min(times[side]):6.2f} / {statistics.median(times[side]):6.2f}"
                     for side in ("allocated", "held")]
            print(f"{name:<40} {cells[0]:>28} {cells[1]:>24} {saved:14.2f} us", flush=True)


if __name__ == "__main__":
    main()
