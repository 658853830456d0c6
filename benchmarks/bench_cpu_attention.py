"""The op's CPU path (glacompiler/op/cpu_attention.py) against the reference it replaced and against SDPA.

On CPU tensors (outside the Triton interpreter) the op runs PyTorch's fused CPU attention kernel, the one
F.scaled_dot_product_attention takes on CPU, with a KV head's query heads folded into the query rows; until
this path it ran glacompiler.reference op by op. Each row times, in the same process and in turn:
- op: the op's CPU implementation alone (validated arguments; the op call adds validation, about 10 us);
- reference: glacompiler.reference.attention_with_kvcache_reference in float32, the previous CPU path;
- sdpa: F.scaled_dot_product_attention(enable_gqa=True) on the contiguous cache with a boolean mask of the
  lengths (grouped kinds only), what a model's own attention runs on CPU under the default backend.
Times are medians of timed calls (ms); "of floor" is the floor over the op's time, the floor being the cache's
valid bytes over this machine's copy bandwidth measured in the same run (bytes read plus written); "op vs ref" is
the largest difference of the two outputs over the output's largest value.

    python benchmarks/bench_cpu_attention.py            # the shapes below (about a minute on 2 cores)
    python benchmarks/bench_cpu_attention.py --tiny     # small shapes, a check of the script
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glacompiler.op.cpu_attention import cpu_attention
from glacompiler.reference import attention_with_kvcache_reference


@dataclass(frozen=True)
class Case:
    name: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int  # keys (and values, for grouped kinds); the latent's width for latent kinds
    rope_dim: int  # 0: grouped (separate K and V); > 0: latent (values are the latent, the rope key shared)
    batch: int
    capacity: int
    valid: int
    dtype: torch.dtype


CASES = (
    Case("GQA 32/8/128", 32, 8, 128, 0, 4, 4096, 4000, torch.bfloat16),
    Case("GQA 32/8/128", 32, 8, 128, 0, 4, 4096, 4000, torch.float32),
    Case("MLA 16 x 512+64", 16, 1, 512, 64, 2, 4096, 4000, torch.bfloat16),
    Case("GLA-2 16 x 256+64", 16, 2, 256, 64, 2, 4096, 4000, torch.bfloat16),
    Case("GQA 4/2/16 (tiny)", 4, 2, 16, 0, 2, 116, 27, torch.float32),
)
TINY_CASES = (
    Case("GQA 8/2/32", 8, 2, 32, 0, 2, 128, 100, torch.bfloat16),
    Case("MLA 8 x 64+16", 8, 1, 64, 16, 2, 128, 100, torch.float32),
)


def median_ms(fn, seconds: float) -> float:
    """Median of calls timed one by one, for about `seconds` after two untimed ones."""
    fn(), fn()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth(seconds: float) -> float:
    """Bytes per second of a 256 MiB copy, bytes read plus bytes written."""
    source = torch.randn(64 * 2**20)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / (median_ms(lambda: target.copy_(source), seconds) * 1e-3)


def time_case(case: Case, bandwidth: float, seconds: float) -> dict:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(case.dtype)

    latent = case.rope_dim > 0
    q = randn(case.batch, 1, case.num_q_heads, case.head_dim)
    k_cache = randn(case.batch, case.capacity, case.num_kv_heads, case.head_dim)
    v_cache = None if latent else randn(case.batch, case.capacity, case.num_kv_heads, case.head_dim)
    q_rope = randn(case.batch, 1, case.num_q_heads, case.rope_dim) if latent else None
    k_rope = randn(case.batch, case.capacity, case.rope_dim) if latent else None
    lengths = torch.full((case.batch,), case.valid, dtype=torch.int32)
    scale = (case.head_dim + case.rope_dim) ** -0.5
    def op():
        return cpu_attention(q, k_cache, v_cache, q_rope, k_rope, lengths, None, None, scale, True, 0.0, None, None,
                             (-1, -1))

    def reference():
        return attention_with_kvcache_reference(q, k_cache, v_cache, q_rope=q_rope, k_rope_cache=k_rope,
                                                cache_seqlens=lengths, softmax_scale=scale)

    # The outputs first: the largest difference from the reference, in units of the output's largest value.
    expected = reference()[0].float()
    row = {"difference": ((op()[0].float() - expected).abs().max() / expected.abs().max()).item()}
    row["op"] = median_ms(op, seconds)
    row["reference"] = median_ms(reference, seconds)
    if not latent:
        mask = (torch.arange(case.capacity) < lengths[:, None])[:, None, None, :]
        q_heads_first, k_heads_first, v_heads_first = (t.transpose(1, 2) for t in (q, k_cache, v_cache))
        row["sdpa"] = median_ms(lambda: F.scaled_dot_product_attention(
            q_heads_first, k_heads_first, v_heads_first, attn_mask=mask, scale=scale, enable_gqa=True), seconds)
    element = torch.empty((), dtype=case.dtype).element_size()
    widths = case.head_dim + case.rope_dim if latent else 2 * case.num_kv_heads * case.head_dim
    row["floor"] = case.batch * case.valid * widths * element / bandwidth * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small shapes: a check of the script")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per measure (default 2)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    bandwidth = copy_bandwidth(args.seconds)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s; ms per call, median; Lq 1, full batch at the valid length")
    print(f"{'case':<20} {'dtype':<9} {'B':>3} {'valid/S':>10} {'floor':>8} {'op':>8} {'of floor':>8} "
          f"{'reference':>10} {'ref/op':>7} {'sdpa':>8} {'sdpa/op':>8} {'op vs ref':>9}")
    for case in TINY_CASES if args.tiny else CASES:
        row = time_case(case, bandwidth, args.seconds)
        sdpa = row.get("sdpa")
        print(f"{case.name:<20} {str(case.dtype).replace('torch.', ''):<9} {case.batch:>3} "
              f"{case.valid:>5}/{case.capacity:<4} {row['floor']:8.3f} {row['op']:8.3f} "
              f"{row['floor'] / row['op']:8.2f} {row['reference']:10.3f} {row['reference'] / row['op']:6.1f}x "
              + (f"{sdpa:8.3f} {sdpa / row['op']:7.2f}x" if sdpa is not None else f"{'-':>8} {'-':>8}")
              + f" {row['difference']:9.1e}")


if __name__ == "__main__":
    main()
