"""The Hopper latent kernel's block size on 256-wide latents: 64- against 128-key blocks (LatentHopperConfig.block_n)
on the 64-row tile, at the heuristic's split count (and at half of it for the 128-key blocks, which halve the
blocks of a split), with MLA on the same per-device shapes as issue 14's baseline (tensor parallelism over two
GPUs: 64 query heads a device, MLA's latent replicated, GLA-2's two latent heads one a device).

bf16, paged cache (page 64, permuted page table), full lengths, Lq as listed. Kernel time by CUDA-graph replay
(median of do_bench_cudagraph); floor = max(cache bytes / copy bandwidth, flops / bf16 matmul rate), both measured
in the same run as bench_decode.py measures them (one shared rope key). The last column is the largest output
difference between the two block sizes.

    python benchmarks/bench_latent_blocks.py        # on an H100/H200
"""
from __future__ import annotations

import argparse
import torch
import triton

import glacompiler
from glacompiler.kernels.common.splits import device_multiprocessors
from glacompiler.kernels.latent_hopper import LatentHopperConfig
from glacompiler.kernels.latent_hopper.config import heuristic_config
from glacompiler.spec import AttentionSpec, ProblemShape

from ab_decode import paged_decode_inputs
from bench_decode import copy_bandwidth, matmul_rate

ROPE = 64
PAGE = 64
# (label, query heads, latent heads, latent width, batch, cache length, query tokens)
CASES = [
    ("GLA-2", 128, 2, 256, 128, 8192, 1),
    ("GLA-2", 128, 2, 256, 8, 32768, 1),
    ("GLA-2", 128, 2, 256, 1, 65536, 1),
    ("GLA-8", 128, 8, 256, 128, 8192, 1),
    ("GLA-8", 128, 8, 256, 8, 32768, 1),
    ("GLA-8", 128, 8, 256, 32, 4096, 4),
    ("GLA-8", 128, 8, 256, 1, 65536, 1),
] + [(label, 64, 1, width, batch, length, 1) for batch in (1, 8, 32) for length in (32768, 131072)
     for label, width in (("MLA TP2", 512), ("GLA-2 TP2", 256))]


def kernel_us(kwargs: dict, config: LatentHopperConfig) -> tuple:
    def call():
        return glacompiler.attention_with_kvcache_config(**kwargs, config=config)

    out = call()[0]
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(call, rep=200, return_mode="median") * 1e3, out


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    bandwidth, rate = copy_bandwidth(), matmul_rate()
    multiprocessors = device_multiprocessors(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; copy "
          f"{bandwidth / 1e9:.0f} GB/s, bf16 matmul {rate / 1e12:.0f} TFLOP/s")
    print("| case | B | S | Lq | splits | floor us | 64-key us (of floor) | 128-key us (of floor) | 128 / 64 | "
          "128-key, half the splits, us | max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, num_q_heads, latent_heads, width, batch, length, query_len in CASES:
        kwargs = paged_decode_inputs(num_q_heads, latent_heads, width, 0, ROPE, batch, length, query_len, PAGE)
        spec = AttentionSpec.latent(num_q_heads, latent_heads, width, ROPE, paged=True)
        tokens = batch * length
        floor_us = 1e6 * max(tokens * (latent_heads * width + ROPE) * 2 / bandwidth,
                             2 * query_len * num_q_heads * tokens * (2 * width + ROPE) / rate)
        base = heuristic_config(spec, ProblemShape(batch, query_len, length, PAGE), multiprocessors,
                                torch.cuda.get_device_name())
        short = LatentHopperConfig(base.num_splits, base.row_split, block_n=64)
        short_us, short_out = kernel_us(kwargs, short)
        row = f"| {label} | {batch} | {length} | {query_len} | {base.num_splits} | {floor_us:.0f} | " \
              f"{short_us:.1f} ({floor_us / short_us:.2f}) |"
        if LatentHopperConfig(base.num_splits, base.row_split, block_n=128).problem_with(spec) is None:
            wide_us, wide_out = kernel_us(kwargs, LatentHopperConfig(base.num_splits, base.row_split, block_n=128))
            half = "-"
            if base.num_splits > 1:
                half = f"{kernel_us(kwargs, LatentHopperConfig(base.num_splits // 2, base.row_split, 128))[0]:.1f}"
            difference = (wide_out.float() - short_out.float()).abs().max().item()
            row += (f" {wide_us:.1f} ({floor_us / wide_us:.2f}) | {wide_us / short_us:.3f} | {half} | "
                    f"{difference:.1e} |")
        else:
            row += " - | - | - | - |"
        print(row, flush=True)
        del kwargs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
