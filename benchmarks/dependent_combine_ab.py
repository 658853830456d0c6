"""The combine launched dependent (PDL, kernels/common/dependent_launch.py) against launched after the split kernel's
completion, in one process: kernel time by CUDA-graph replay, the two plans of each row alternating over rounds.

    python benchmarks/dependent_combine_ab.py [--rounds 5] [--rows gta:8x32768x4,mla:1x65536x1]

Rows: issue 13's grid rows whose configs split (the combine runs), decode_grid's data and floor (bytes / copy
bandwidth, flops / bf16 matmul rate, both measured in this run). Each side is its own prepared call (the plan is made
with GLACOMPILER_PDL set for it); the table gives each side's median over the rounds, its fraction of the floor and
off / on. A row whose plan does not split is listed as such and not timed (no combine to launch)."""
from __future__ import annotations

import argparse
import os
import statistics

import torch
import triton

from glacompiler.kernels.common.dependent_launch import ENVIRONMENT_SWITCH
from glacompiler.op.prepared import clear_prepared_calls, prepared_call
from glacompiler.op.validation import validate_inputs

from ab_decode import make_inputs
from bench_decode import copy_bandwidth, matmul_rate, problem_cost
from decode_grid import rotating_rounds

# (kind, batch, cache length, query tokens): grid rows whose tuned configs split on Hopper
DEFAULT_ROWS = ("gta:8x32768x4,gta:32x4096x4,gta:32x4096x2,gta:1x65536x1,gqa:1x65536x1,gqa:8x32768x1,mla:1x65536x1,"
                "mla:8x32768x1,gla2:1x65536x1,gla2:8x32768x1,gla2:32x4096x4,gla8:1x65536x1")


def parse_rows(text: str) -> list[tuple[str, int, int, int]]:
    rows = []
    for item in text.split(","):
        kind, shape = item.strip().split(":")
        batch, length, query_len = (int(part) for part in shape.split("x"))
        rows.append((kind, batch, length, query_len))
    return rows


def plan_with_pdl(enabled: bool, kwargs: dict, scale: float):
    """A prepared call of kwargs planned with dependent combines on or off, and its call."""
    os.environ[ENVIRONMENT_SWITCH] = "1" if enabled else "0"
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
    print("| case | B | S | Lq | splits | floor us | combine after us (of floor) | dependent combine us (of floor) | "
          "after / dependent | max |after - dependent| out |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, batch, length, query_len in parse_rows(args.rows):
        kwargs = make_inputs(kind, batch, length, query_len, args.page_size)
        spec, _ = validate_inputs(kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), kwargs.get("q_rope"),
                                  kwargs.get("k_rope_cache"), kwargs["cache_seqlens"], kwargs.get("page_table"), None,
                                  None, None)
        scale = (spec.head_dim_q + spec.rope_dim) ** -0.5
        bytes_moved, flops = problem_cost(spec, kwargs["q"], kwargs["cache_seqlens"])
        floor = max(bytes_moved / bandwidth, flops / flop_rate) * 1e6
        after_call, after = plan_with_pdl(False, kwargs, scale)
        dependent_call, dependent = plan_with_pdl(True, kwargs, scale)
        splits = after_call.plan.buffers.num_splits
        head = f"| {kind} | {batch} | {length // 1024}K | {query_len} | {splits} | {floor:.1f} |"
        if splits == 1:
            print(f"{head} one split: no combine | | | |", flush=True)
            continue
        difference = (after()[0].float() - dependent()[0].float()).abs().max().item()
        times = rotating_rounds({"after": after, "dependent": dependent}, args.rounds)
        us = {side: statistics.median(values) for side, values in times.items()}
        dependent_launch = dependent_call.plan.buffers.combine_launch
        pdl = bool(getattr(getattr(dependent_launch.compiled, "metadata", None), "launch_pdl", False))
        print(f"{head} {us['after']:.2f} ({floor / us['after']:.3f}) | {us['dependent']:.2f} "
              f"({floor / us['dependent']:.3f}){'' if pdl else ' NOT PDL'} | {us['after'] / us['dependent']:.3f} | "
              f"{difference:.1e} |", flush=True)
        del kwargs
        torch.cuda.empty_cache()
    os.environ.pop(ENVIRONMENT_SWITCH, None)


if __name__ == "__main__":
    main()
