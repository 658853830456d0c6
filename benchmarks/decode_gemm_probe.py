"""Decode-step GEMMs (a few rows against a frozen weight) on cuBLAS and on a split-K Triton kernel (design work for
issue 13 goal 4: a step bound by the GPU).

Profiles of the graphed Llama-3.2-1B-shaped step and of bench_backend.py's GLA-2 put the rest of their distance from
the step floor in cuBLAS's GEMMs at M = 64 (benchmarks/RESULTS.md): 0.09-0.87 of their weight-read floor. Whether a
kernel of our own would do better decides whether the backend should rewrite those GEMMs; this script answers it
before any pass is written. For each shape it times torch's `F.linear` (cuBLAS, the call Inductor makes for a frozen
nn.Linear) and `split_k_linear` over a grid of tiles and split counts, and prints each one's best against the
floor: the weight, input and output bytes over the copy bandwidth measured in the same run (bench_decode.py's measure).

`split_k_linear` splits K across programs; each program stores its fp32 partial tile, and the program that counts a
column block's last split in sums the partials in split order (deterministic) and writes the output: one launch,
no reduce kernel, and a count that sets itself back to 0 for the next call (so a CUDA graph may replay it).

Timing: CUDA-graph replay of one call per weight copy, over enough copies that the weights do not stay in L2
between calls (a decode step reads each weight once), median of `triton.testing.do_bench`; the search's best config
and cuBLAS are then timed again in interleaved rounds, and those medians are printed. Outputs: a config's lone call
against a float32 product with FlashAttention's rule (error at most 2x cuBLAS's in the same precision, plus one
rounding step), and its graph-replayed calls (sharing one count) equal to that call bit for bit.

    python benchmarks/decode_gemm_probe.py                                # Llama-3.2-1B and GLA-2 XL shapes, M 64
    python benchmarks/decode_gemm_probe.py --shapes 64x2048x3072 --grid 'block_n=64,128 block_k=128 num_stages=4'
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from glacompiler.problems import max_error

from bench_decode import copy_bandwidth
from sweep_configs import parse_grid

# (name, M, K, N): a decode batch of 64 rows through each projection of the two models whose steps were profiled.
DEFAULT_SHAPES = (
    ("llama q/k/v (one GEMM)", 64, 2048, 3072),
    ("llama o", 64, 2048, 2048),
    ("llama gate/up (one GEMM)", 64, 2048, 16384),
    ("llama down", 64, 8192, 2048),
    ("llama lm_head", 64, 2048, 32000),
    ("gla-2 xl gate/up (one GEMM, padded)", 64, 2048, 12592),
    ("gla-2 xl down (padded)", 64, 6304, 2048),
)
DEFAULT_GRID = "block_n=64,128 block_k=128,256 num_warps=4 num_stages=3,4,5"
SPLIT_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16)
REDUCE_UNROLL = 4  # splits whose partials the last program loads at once (as the portable kernel's fused combine)


def split_k_linear_source(x_ptr, w_ptr, out_ptr, partial_ptr, count_ptr, M, N, K, k_per_split,
                          stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          REDUCE: tl.constexpr, REDUCE_UNROLL: tl.constexpr):
    """out[M, N] = x[M, K] @ w[N, K]^T. Program (n, s) takes columns n * BLOCK_N.. and keys s * k_per_split..."""
    column_block = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    rows = tl.arange(0, BLOCK_M)
    columns = column_block * BLOCK_N + tl.arange(0, BLOCK_N)
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(k_begin, k_end, BLOCK_K):
        ks = k + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=(rows[:, None] < M) & (ks[None, :] < k_end), other=0.0)
        w = tl.load(w_ptr + columns[None, :] * stride_wn + ks[:, None] * stride_wk,
                    mask=(columns[None, :] < N) & (ks[:, None] < k_end), other=0.0)
        acc = tl.dot(x, w, acc)
    out_mask = (rows[:, None] < M) & (columns[None, :] < N)
    out_offsets = rows[:, None] * stride_om + columns[None, :] * stride_on
    if REDUCE:
        tile = rows[:, None] * N + columns[None, :]  # (int32: SplitKLinear keeps splits x M x N below 2**31)
        tl.store(partial_ptr + split * M * N + tile, acc, mask=out_mask)
        tl.debug_barrier()  # every thread's partial stores come before the count's release
        arrived = tl.atomic_add(count_ptr + column_block, 1, sem="acq_rel")
        if arrived == splits - 1:
            tl.atomic_xchg(count_ptr + column_block, 0)
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            # In split order, its own partial too: the same sum whichever program arrives last. Unrolled, so that
            # several splits' loads are in flight at once (a split at a time is a chain of L2 round trips).
            for part in tl.range(0, splits, loop_unroll_factor=REDUCE_UNROLL):
                # (.cg: from L2, which the other programs' stores reached; this SM's L1 is not coherent with them)
                total += tl.load(partial_ptr + part * M * N + tile, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + out_offsets, total.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


_KERNELS: dict = {}


def split_k_linear_kernel():
    """The kernel, jitted for the mode Triton runs in now (the interpreter's TRITON_INTERPRET=1 is read when a
    function is jitted, so the tests' CPU runs need their own)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if interpreted not in _KERNELS:
        _KERNELS[interpreted] = triton.jit(split_k_linear_source)
    return _KERNELS[interpreted]


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3

    def label(self) -> str:
        return f"n{self.block_n} k{self.block_k} split {self.split_k} w{self.num_warps} st{self.num_stages}"


class SplitKLinear:
    """x @ weight^T for one (M, K, N) and config; holds the counts its launches share (each call leaves them 0).
    One row block (BLOCK_M = M rounded up to a power of two): a decode GEMM's few rows, not a general F.linear."""

    def __init__(self, rows: int, width: int, columns: int, config: GemmConfig, device: torch.device):
        if config.split_k < 1 or config.block_k < 16 or config.block_n < 16:
            raise ValueError(f"config: split_k >= 1 and blocks of at least 16 needed, got {config}")
        if config.split_k * rows * columns >= 2**31 or width * columns >= 2**31:
            raise ValueError(f"config: {config.split_k} partials of {rows} x {columns}, or a weight of {columns} x "
                             f"{width}, pass int32 offsets")
        self.rows, self.width, self.columns, self.config = rows, width, columns, config
        self.block_m = max(16, triton.next_power_of_2(rows))
        key_blocks = triton.cdiv(width, config.block_k)
        self.k_per_split = triton.cdiv(key_blocks, config.split_k) * config.block_k
        self.grid = (triton.cdiv(columns, config.block_n), config.split_k)
        self.counts = torch.zeros(self.grid[0], dtype=torch.int32, device=device)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        config = self.config
        reduce = config.split_k > 1
        partial = torch.empty((config.split_k, self.rows, self.columns) if reduce else (1,), dtype=torch.float32,
                              device=x.device)
        split_k_linear_kernel()[self.grid](
            x, weight, out, partial, self.counts, self.rows, self.columns, self.width, self.k_per_split,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
            BLOCK_M=self.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, REDUCE=reduce,
            REDUCE_UNROLL=REDUCE_UNROLL,
            num_warps=config.num_warps, num_stages=config.num_stages)
        return out


def split_k_linear(x: torch.Tensor, weight: torch.Tensor, config: GemmConfig) -> torch.Tensor:
    """F.linear(x, weight) for a 2-D x and nn.Linear's [N, K] weight, on the split-K kernel (a fresh count each
    call: for checks; time a SplitKLinear)."""
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    return SplitKLinear(x.shape[0], x.shape[1], weight.shape[0], config, x.device)(x, weight, out)


def configs_for(width: int, grid: dict) -> list:
    """The grid's tiles at every split count that leaves each split at least one key block and changes the
    split's length (so 12 and 16 splits of 16 blocks are not both timed)."""
    configs = []
    for block_n, block_k, warps, stages in itertools.product(grid["block_n"], grid["block_k"], grid["num_warps"],
                                                             grid["num_stages"]):
        blocks = triton.cdiv(width, block_k)
        seen = set()
        for split in SPLIT_COUNTS:
            per_split = triton.cdiv(blocks, split)
            if split > blocks or per_split in seen:
                continue
            seen.add(per_split)
            configs.append(GemmConfig(block_n, block_k, triton.cdiv(blocks, per_split), warps, stages))
    return configs


def graph_us_per_call(call, copies: int) -> float:
    """One call per weight copy captured in a CUDA graph; median replay time over the copies."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for index in range(copies):  # warm-up (compiles) outside the capture
            call(index)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for index in range(copies):
            call(index)
    return triton.testing.do_bench(graph.replay, return_mode="median") * 1e3 / copies


def time_shape(name: str, rows: int, width: int, columns: int, grid: dict, bandwidth: float, l2_bytes: int,
               rounds: int = 3):
    from triton.runtime.errors import OutOfResources  # late: the interpreter must be chosen before triton loads
    device = torch.device("cuda")
    dtype = torch.bfloat16
    weight_bytes = width * columns * 2
    copies = max(2, -(-4 * l2_bytes // weight_bytes))
    generator = torch.Generator(device=device).manual_seed(0)
    weights = [torch.randn(columns, width, device=device, dtype=dtype, generator=generator) / width ** 0.5
               for _ in range(copies)]
    x = torch.randn(rows, width, device=device, dtype=dtype, generator=generator)
    outs = [torch.empty(rows, columns, device=device, dtype=dtype) for _ in range(copies)]
    references = {index: x.float() @ weights[index].float().t() for index in (0, copies - 1)}
    # FlashAttention's rule per checked copy: at most 2x cuBLAS's error, plus one bf16 step at the largest output
    allowed = {index: 2 * max_error(F.linear(x, weights[index]), reference)
               + reference.abs().max().item() * torch.finfo(dtype).eps for index, reference in references.items()}

    def right(out, index) -> bool:  # (NaN: max_error gives nan, which no bound admits)
        return max_error(out, references[index]) <= allowed[index]

    floor_us = (weight_bytes + (rows * width + rows * columns) * 2) / bandwidth * 1e6

    def cublas(index):
        torch.matmul(x, weights[index].t(), out=outs[index])

    results = []
    for config in configs_for(width, grid):
        try:
            gemm = SplitKLinear(rows, width, columns, config, device)
            alone = split_k_linear(x, weights[0], config)  # a call of its own, fresh counts
            if not right(alone, 0):
                error = max_error(alone, references[0])
                results.append((float("inf"), config, f"error {error:.3g} > {allowed[0]:.3g} (FlashAttention's rule)"))
                continue
            us = graph_us_per_call(lambda i: gemm(x, weights[i], outs[i]), copies)
        except (OutOfResources, ValueError) as error:
            results.append((float("inf"), config, f"left out ({error})"))
            continue
        # The timed calls too (replayed back to back, sharing counts): the lone call's bits, right on another copy.
        if not torch.equal(outs[0], alone) or not right(outs[-1], copies - 1):
            results.append((float("inf"), config, "the graph-replayed outputs are wrong"))
            continue
        results.append((us, config, ""))
    results.sort(key=lambda result: result[0])
    best_us, best, _ = results[0]
    # The winner was picked from its own timings: time it and cuBLAS again, interleaved, for the figures printed.
    if best_us < float("inf"):
        gemm = SplitKLinear(rows, width, columns, best, device)
        cublas_rounds, best_rounds = [], []
        for _ in range(rounds):
            cublas_rounds.append(graph_us_per_call(cublas, copies))
            best_rounds.append(graph_us_per_call(lambda i: gemm(x, weights[i], outs[i]), copies))
        cublas_us, best_us = statistics.median(cublas_rounds), statistics.median(best_rounds)
    else:
        cublas_us = graph_us_per_call(cublas, copies)
    print(f"{name}: M {rows} K {width} N {columns}, weight {weight_bytes / 2**20:.1f} MiB x {copies} copies, "
          f"floor {floor_us:.2f} us")
    print(f"  cuBLAS (F.linear)              {cublas_us:8.2f} us ({floor_us / cublas_us:.2f} of the floor)")
    print(f"  split-K best: {best.label():<28} {best_us:8.2f} us ({floor_us / best_us:.2f}), "
          f"{cublas_us / best_us:.2f}x cuBLAS (both: median of {rounds} interleaved rounds)")
    for us, config, _ in results[1:4]:
        print(f"    then {config.label():<30} {us:8.2f} us (the search's timing)")
    failed = [(config, why) for us, config, why in results if why]
    if failed:
        print(f"    {len(failed)} of {len(results)} configs left out; first: {failed[0][0].label()}: {failed[0][1]}")
    return cublas_us, best_us, floor_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", metavar="MxKxN", help="default: the models' projections at M 64")
    parser.add_argument("--grid", default=DEFAULT_GRID, help="space-separated key=v1,v2 lists of block_n, block_k, "
                                                               "num_warps, num_stages")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("decode_gemm_probe.py times GPU kernels: run it on a CUDA machine")
    grid = {"block_n": [64], "block_k": [128], "num_warps": [4], "num_stages": [3], **parse_grid(args.grid)}
    shapes = DEFAULT_SHAPES if not args.shapes else [
        (text, *map(int, text.lower().split("x"))) for text in args.shapes]
    properties = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth()
    print(f"{properties.name}, torch {torch.__version__}, triton {triton.__version__}; bf16; copy bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s; grid {grid}")
    totals = [time_shape(name, m, k, n, grid, bandwidth, properties.L2_cache_size) for name, m, k, n in shapes]
    cublas, ours, floor = (sum(column) for column in zip(*totals))
    print(f"all shapes, one call each: cuBLAS {cublas:.1f} us ({floor / cublas:.2f} of the floor), split-K best "
          f"{ours:.1f} us ({floor / ours:.2f}); medians of the per-shape ratios: "
          f"{statistics.median(c / o for c, o, _ in totals):.2f}x")


if __name__ == "__main__":
    main()
