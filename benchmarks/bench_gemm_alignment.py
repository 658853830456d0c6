"""Decode-batch GEMMs over weights of odd widths, as cuBLAS runs them and padded to aligned widths (what
compiler/align_projections.py does to a frozen graph's weights), on one GPU.

The shapes are the MLPs of the paper's XL models (GTA-4: 6638 wide, GLA-2: 6292; gate and up concatenated, as
Inductor's freezing makes them) and a GPT-2-sized vocabulary head, at a decode batch of 64 rows. Each row times
the GEMM as it is, with its odd widths padded to a multiple of 16 bytes (the pass's choice) and of 128 bytes;
padding an input width includes nothing for the input's pad (Inductor fuses it into the kernel making the input),
padding an output width includes the copy of the product back to its width (what an extern consumer would need).
Times by CUDA-graph replay over enough weight copies to miss L2; the floor is the weight's bytes over the
measured copy bandwidth.

    python benchmarks/bench_gemm_alignment.py [--rows 64]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton

from glacompiler.compiler.align_projections import aligned_width

from bench_decode import copy_bandwidth  # (beside it)

SHAPES = {  # name: (K, N) of x [rows, K] @ weight [K, N], the weight nn.Linear's [N, K] transposed
    "GTA-4 gate+up": (2048, 2 * 6638),
    "GTA-4 down": (6638, 2048),
    "GLA-2 gate+up": (2048, 2 * 6292),
    "GLA-2 down": (6292, 2048),
    "vocab head 50257": (768, 50257),
}
L2_MISS_BYTES = 256 << 20  # weight copies replayed in turn: together far past the H200's 50 MB of L2


def time_gemm(rows: int, k: int, n: int, k_used: int, n_used: int) -> float:
    """us per GEMM of x [rows, k] by weights [k, n], the product sliced back to n_used columns (a copy) where n is
    wider; inputs random, zero beyond k_used (their pad)."""
    copies = max(2, L2_MISS_BYTES // (k * n * 2))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16).t() for _ in range(copies)]
    x = F.pad(torch.randn(rows, k_used, device="cuda", dtype=torch.bfloat16), (0, k - k_used))

    def run():
        for weight in weights:
            product = x @ weight
            if n != n_used:
                product[:, :n_used].contiguous()

    return triton.testing.do_bench_cudagraph(run, rep=200) * 1e3 / copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; bf16, {args.rows} rows; copy bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s\nus per GEMM (of the floor: the weight's bytes over the copy bandwidth)")
    print(f"{'shape':<18} {'K x N':>13} {'floor':>7} {'as is':>14} {'16 B aligned':>14} {'128 B aligned':>14}")
    for name, (k, n) in SHAPES.items():
        floor = k * n * 2 / bandwidth * 1e6
        cells = []
        for multiple in (None, 16, 128):
            k_run, n_run = (k, n) if multiple is None else (aligned_width(k, torch.bfloat16, multiple),
                                                             aligned_width(n, torch.bfloat16, multiple))
            us = time_gemm(args.rows, k_run, n_run, k, n)
            cells.append(f"{us:7.1f} ({floor / us:.2f})")
        print(f"{name:<18} {f'{k} x {n}':>13} {floor:7.1f} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")


if __name__ == "__main__":
    main()
