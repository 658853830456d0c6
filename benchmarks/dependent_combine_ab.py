"""A portable split kernel signalling its dependent combine (PDL, kernels/common/dependent_launch.py) against the
ordinary launches, in one process: kernel time by CUDA-graph replay, the two plans of each row alternating over rounds.

    python benchmarks/dependent_combine_ab.py [--rounds 5] [--rows gta:8x32768x4,gqa:1x65536x1]

Rows: issue 13's grid rows whose configs split (the combine runs), decode_grid's data and floor (bytes / copy
bandwidth, flops / bf16 matmul rate, both measured in this run). Each side is its own prepared call (the plan is made
with GLACOMPILER_PDL set for it); the table gives each side's median over the rounds, its fraction of the floor and
ordinary / dependent. Rows whose plan does not split, fuses its combine or runs the Hopper latent kernels (which keep
the ordinary launch) are listed as such and not timed."""
from __future__ import annotations

import argparse
import os
import statistics

import torch
import triton

from glacompiler.kernels.common.dependent_launch import ENVIRONMENT_SWITCH, dependent_launch_enabled
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


# the sides: GLACOMPILER_PDL as each side's plan is made
SIDES = {"ordinary": "0", "dependent": "1"}


def plan_with_pdl(side: str, kwargs: dict, scale: float):
    """A prepared call of kwargs planned under a side's switches, and its call."""
    os.environ[ENVIRONMENT_SWITCH] = SIDES[side]
    clear_prepared_calls()  # (a new plan, so a new combine launch, for this side)
    args = (kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), kwargs.get("q_rope"), kwargs.get("k_rope_cache"),
            kwargs["cache_seqlens"], kwargs.get("page_table"))
    call = prepared_call(*args, None, scale, True, 0)
    return call, lambda: call.run(*args, None, None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="kind:BxSxLq, comma-separated")
    parser.add_argument("--page-size", type=int, default=64)
    args = parser.parse_args()
    bandwidth, flop_rate = copy_bandwidth(), matmul_rate()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; copy "
          f"{bandwidth / 1e9:.0f} GB/s, bf16 matmul {flop_rate / 1e12:.0f} TFLOP/s; page {args.page_size}, bf16, "
          f"full lengths, causal; median of {args.rounds} alternating rounds, CUDA-graph replay")
    print("| case | B | S | Lq | splits | floor us | ordinary us (of floor) | dependent us (of floor) | "
          "ordinary / dependent | max |out - ordinary's| |")
    print("|---" * 10 + "|")
    saved = os.environ.get(ENVIRONMENT_SWITCH)
    try:
        time_rows(args, bandwidth, flop_rate)
    finally:
        if saved is None:
            os.environ.pop(ENVIRONMENT_SWITCH, None)
        else:
            os.environ[ENVIRONMENT_SWITCH] = saved


def time_rows(args, bandwidth: float, flop_rate: float) -> None:
    for kind, batch, length, query_len in parse_rows(args.rows):
        kwargs = make_inputs(kind, batch, length, query_len, args.page_size)
        spec, _ = validate_inputs(kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), kwargs.get("q_rope"),
                                  kwargs.get("k_rope_cache"), kwargs["cache_seqlens"], kwargs.get("page_table"), None,
                                  None, None)
        scale = (spec.head_dim_q + spec.rope_dim) ** -0.5
        bytes_moved, flops = problem_cost(spec, kwargs["q"], kwargs["cache_seqlens"])
        floor = max(bytes_moved / bandwidth, flops / flop_rate) * 1e6
        plans = {side: plan_with_pdl(side, kwargs, scale) for side in SIDES}
        dependent_plan = plans["dependent"][0].plan
        splits = dependent_plan.buffers.num_splits
        head = f"| {kind} | {batch} | {length // 1024}K | {query_len} | {splits} | {floor:.1f} |"
        # (the switch is on here: the dependent side was planned last)
        why_not = ("no dependent launch on this GPU" if not dependent_launch_enabled(kwargs["q"].device)
                   else "one split" if splits == 1 else "fused combine" if getattr(dependent_plan, "fused", False)
                   else None if getattr(dependent_plan, "signals_combine", False) else "Hopper latent kernel")
        if why_not is not None:
            print(f"{head} {why_not}: ordinary launches either way |", flush=True)
            continue
        reference = plans["ordinary"][1]()[0].float()
        difference = max((call()[0].float() - reference).abs().max().item() for _, call in plans.values())
        times = rotating_rounds({side: call for side, (_, call) in plans.items()}, args.rounds)
        us = {side: statistics.median(values) for side, values in times.items()}
        combine = dependent_plan.buffers.combine_launch
        marker = "" if getattr(getattr(combine.compiled, "metadata", None), "launch_pdl", False) else " NOT PDL"
        print(f"{head} {us['ordinary']:.2f} ({floor / us['ordinary']:.3f}) | {us['dependent']:.2f} "
              f"({floor / us['dependent']:.3f}){marker} | {us['ordinary'] / us['dependent']:.3f} | {difference:.1e} |",
              flush=True)
        del kwargs, plans
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
