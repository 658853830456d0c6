"""A portable split kernel signalling its dependent combine (PDL, kernels/common/dependent_launch.py) against the
ordinary launches, in one process: kernel time by CUDA-graph replay, the two plans of each row alternating over rounds.

    python benchmarks/dependent_combine_ab.py [--rounds 5] [--rows gta:8x32768x4,gqa:1x65536x1] [--splits 0,8,16]

Rows: issue 13's grid rows whose configs split (the combine runs), decode_grid's data and floor (bytes / copy
bandwidth, flops / bf16 matmul rate, both measured in this run). Each side is its own prepared call (the plan is made
with GLACOMPILER_PDL set for it); the table gives each side's median over the rounds, its fraction of the floor,
ordinary / dependent, the side the default takes (GLACOMPILER_PDL unset: by the wave fill), and the split kernel's
programs against the programs the GPU holds at once (SMs x the binary's residency by registers, shared memory and
warps), whose ratio is its waves. --splits times each row at each split count (0: the table's or the planner's).
Rows whose plan does not split, fuses its combine or runs the Hopper latent kernels (which keep the ordinary
launch) are listed as such and not timed."""
from __future__ import annotations

import argparse
import os
import statistics

import torch
import triton

from glacompiler.kernels.common.dependent_launch import ENVIRONMENT_SWITCH, dependent_launch_enabled
from glacompiler.kernels.common.device_limits import DeviceLimits
from glacompiler.op.prepared import clear_prepared_calls, prepared_call
from glacompiler.op.validation import validate_inputs

from ab_decode import make_inputs
from bench_decode import copy_bandwidth, matmul_rate, problem_cost
from decode_grid import rotating_rounds

# (kind, batch, cache length, query tokens): grid rows whose tuned configs split on Hopper
DEFAULT_ROWS = ("gta:8x32768x4,gta:8x32768x2,gta:32x4096x4,gta:32x4096x2,gta:1x65536x1,gta:1x65536x4,gqa:1x65536x1,"
                "gqa:8x32768x1,gqa:32x4096x1")


def parse_rows(text: str) -> list[tuple[str, int, int, int]]:
    rows = []
    for item in text.split(","):
        kind, shape = item.strip().split(":")
        batch, length, query_len = (int(part) for part in shape.split("x"))
        rows.append((kind, batch, length, query_len))
    return rows


# the sides: GLACOMPILER_PDL as each side's plan is made; unset, the default chooses by the wave fill
SIDES = {"ordinary": "0", "dependent": "1"}
DEFAULT_SETTING = ""


def plan_with_pdl(setting: str, kwargs: dict, scale: float, num_splits: int):
    """A prepared call of kwargs planned under a GLACOMPILER_PDL setting (num_splits 0: the table's), and its call."""
    os.environ[ENVIRONMENT_SWITCH] = setting
    clear_prepared_calls()  # (a new plan, so a new combine launch, for this side)
    args = (kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), kwargs.get("q_rope"), kwargs.get("k_rope_cache"),
            kwargs["cache_seqlens"], kwargs.get("page_table"))
    call = prepared_call(*args, None, scale, True, num_splits)
    return call, lambda: call.run(*args, None, None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="kind:BxSxLq, comma-separated")
    parser.add_argument("--page-size", type=int, default=64)
    parser.add_argument("--splits", default="0", help="split counts to time each row at, comma-separated (0: the "
                        "table's or the planner's)")
    args = parser.parse_args()
    args.splits = [int(count) for count in args.splits.split(",")]
    bandwidth, flop_rate = copy_bandwidth(), matmul_rate()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; copy "
          f"{bandwidth / 1e9:.0f} GB/s, bf16 matmul {flop_rate / 1e12:.0f} TFLOP/s; page {args.page_size}, bf16, "
          f"full lengths, causal; median of {args.rounds} alternating rounds, CUDA-graph replay")
    print("| case | B | S | Lq | splits | floor us | ordinary us (of floor) | dependent us (of floor) | "
          "ordinary / dependent | default | programs / resident | max |out - ordinary's| |")
    print("|---" * 12 + "|")
    saved = os.environ.get(ENVIRONMENT_SWITCH)
    try:
        time_rows(args, bandwidth, flop_rate)
    finally:
        if saved is None:
            os.environ.pop(ENVIRONMENT_SWITCH, None)
        else:
            os.environ[ENVIRONMENT_SWITCH] = saved


def binary_resident_programs(compiled, device: torch.device) -> int:
    """How many programs of a compiled kernel an SM holds at once (what portable/config.py's resident_programs
    models): the least of its registers' (allocated per warp in 256-register units), its shared memory's (1 KiB of
    each block reserved by CUDA) and its warps' limits."""
    limits, properties = DeviceLimits.for_device(device), torch.cuda.get_device_properties(device)
    warps = compiled.metadata.num_warps
    registers_a_warp = -(-max(1, compiled.n_regs) * 32 // 256) * 256
    by_registers = limits.registers_per_block // (registers_a_warp * warps)
    shared = compiled.metadata.shared
    shared_an_sm = getattr(properties, "shared_memory_per_multiprocessor", 233472)
    by_shared = shared_an_sm // (shared + 1024) if shared else 32
    by_warps = getattr(properties, "max_threads_per_multi_processor", 2048) // (32 * warps)
    return max(0, min(by_registers, by_shared, by_warps, 32))


def waves_text(plan, device: torch.device) -> str:
    """The split kernel's programs / (SMs x the binary's resident programs)."""
    launch = plan.launches[0]
    programs = launch.grid[0] * launch.grid[1] * launch.grid[2]
    slots = DeviceLimits.for_device(device).multiprocessors * binary_resident_programs(launch.compiled, device)
    return f"{programs} / {slots} ({programs / slots:.2f} waves)" if slots else f"{programs} / ?"


def time_rows(args, bandwidth: float, flop_rate: float) -> None:
    for kind, batch, length, query_len in parse_rows(args.rows):
        kwargs = make_inputs(kind, batch, length, query_len, args.page_size)
        spec, _ = validate_inputs(kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), kwargs.get("q_rope"),
                                  kwargs.get("k_rope_cache"), kwargs["cache_seqlens"], kwargs.get("page_table"), None,
                                  None, None)
        scale = (spec.head_dim_q + spec.rope_dim) ** -0.5
        bytes_moved, flops = problem_cost(spec, kwargs["q"], kwargs["cache_seqlens"])
        floor = max(bytes_moved / bandwidth, flops / flop_rate) * 1e6
        for num_splits in args.splits:
            time_row(args, kind, (batch, length, query_len), kwargs, scale, floor, num_splits)
        del kwargs
        torch.cuda.empty_cache()


def time_row(args, kind: str, sizes: tuple, kwargs: dict, scale: float, floor: float, num_splits: int) -> None:
    """One row at one split count: both sides planned, checked against each other, timed in alternating rounds."""
    batch, length, query_len = sizes
    default_plan = plan_with_pdl(DEFAULT_SETTING, kwargs, scale, num_splits)[0].plan
    default_side = "dependent" if getattr(default_plan, "signals_combine", False) else "ordinary"
    plans = {side: plan_with_pdl(setting, kwargs, scale, num_splits) for side, setting in SIDES.items()}
    dependent_plan = plans["dependent"][0].plan
    splits = dependent_plan.buffers.num_splits
    head = f"| {kind} | {batch} | {length // 1024}K | {query_len} | {splits} | {floor:.1f} |"
    # (the switch is on here: the dependent side was planned last)
    why_not = ("no dependent launch on this GPU" if not dependent_launch_enabled(kwargs["q"].device)
               else "one split" if splits == 1 else "fused combine" if getattr(dependent_plan, "fused", False)
               else None if getattr(dependent_plan, "signals_combine", False) else "Hopper latent kernel")
    if why_not is not None:
        print(f"{head} {why_not}: ordinary launches either way |", flush=True)
        return
    reference = plans["ordinary"][1]()[0].float()
    difference = max((call()[0].float() - reference).abs().max().item() for _, call in plans.values())
    times = rotating_rounds({side: call for side, (_, call) in plans.items()}, args.rounds)
    us = {side: statistics.median(values) for side, values in times.items()}
    combine = dependent_plan.buffers.combine_launch
    marker = "" if getattr(getattr(combine.compiled, "metadata", None), "launch_pdl", False) else " NOT PDL"
    print(f"{head} {us['ordinary']:.2f} ({floor / us['ordinary']:.3f}) | {us['dependent']:.2f} "
          f"({floor / us['dependent']:.3f}){marker} | {us['ordinary'] / us['dependent']:.3f} | {default_side} | "
          f"{waves_text(dependent_plan, kwargs['q'].device)} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
