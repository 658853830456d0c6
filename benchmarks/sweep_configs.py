"""Time every config of a small grid on one benchmark case and print them all (kernel design work).

    python benchmarks/sweep_configs.py --case mla --q-len 1 --grid 'block_m=64,128 num_warps=4,8 block_n=16,32'
"""
from __future__ import annotations

import argparse
import logging
import dataclasses
import itertools

import torch
import triton

import glacompiler
from glacompiler.kernels.common.splits import device_multiprocessors
from glacompiler.kernels.portable.config import heuristic_config
from glacompiler.presets import PAPER_SPECS
from glacompiler.problems import check_fa_rule, make_decode_problem

from bench_decode import use_prefix_mask


def parse_grid(text: str) -> dict:
    grid = {}
    for item in text.split():
        key, values = item.split("=")
        grid[key] = [v == "True" if v in ("True", "False") else int(v) for v in values.split(",")]
    return grid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="mla")
    parser.add_argument("--q-len", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--grid", action="append", required=True, help="space-separated key=v1,v2 lists")
    parser.add_argument("--prefix-mask", action="store_true", help="time the masked path backend=\"gla\" takes")
    args = parser.parse_args()
    logging.basicConfig(format="    %(message)s")

    spec = PAPER_SPECS[args.case]
    device = torch.device("cuda")
    problem = make_decode_problem(spec, args.batch, args.q_len, args.seqlen, dtype=torch.bfloat16, device=device,
                                  page_size=64, seqlens=[args.seqlen] * args.batch, poison=False)
    if args.prefix_mask:
        use_prefix_mask(problem.kwargs)
    base = heuristic_config(spec, args.batch, args.seqlen, args.q_len, device_multiprocessors(device))
    configs = [base]
    for grid_text in args.grid:
        grid = parse_grid(grid_text)
        for values in itertools.product(*grid.values()):
            config = dataclasses.replace(base, **dict(zip(grid.keys(), values)))
            if config not in configs:
                configs.append(config)
    print(f"# {torch.cuda.get_device_name()} {args.case} Lq={args.q_len} B={args.batch} S={args.seqlen}"
          f"{' prefix mask' if args.prefix_mask else ''}; {len(configs)} configs")
    rows = []
    for config in configs:
        try:
            logging.getLogger("glacompiler").setLevel(logging.DEBUG)  # registers and spills, at the first launch
            out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
            logging.getLogger("glacompiler").setLevel(logging.WARNING)
            check_fa_rule(out, lse, problem) if config is base else None
            ms = triton.testing.do_bench(lambda: glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config),
                                         warmup=10, rep=40, return_mode="median")
            rows.append((ms, config))
            print(f"{ms * 1e3:8.0f} us  {config}", flush=True)
        except Exception as error:
            print(f"  failed  {config}: {type(error).__name__} {str(error)[:80]}", flush=True)
    rows.sort(key=lambda r: r[0])
    print("best:", *(f"{ms * 1e3:.0f} us {c}" for ms, c in rows[:3]), sep="\n  ")


if __name__ == "__main__":
    main()
