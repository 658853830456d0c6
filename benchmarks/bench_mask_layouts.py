"""The portable kernel on the cache layouts and masks the pass hands it (a transformers StaticCache: a heads-first
[B, H, S, D] cache seen as [B, S, H, D], a bool mask [B, 1, 1, S]), against the same keys as a paged or a
sequence-first cache with lengths: what a mask costs over lengths alone.

GQA, bf16, Lq 1, the op's own config (heuristic or tuned table). Kernel time by CUDA-graph replay (median of
do_bench_cudagraph); floor = valid K and V bytes / copy bandwidth measured in the same run (bytes read + written of
a device copy, so a read-only kernel can pass 1.0). "mask + range" passes the mask's key range as the backend does
(mask_key_range once per step, hoisted out of the layers); "mask" reduces it per call.

    python benchmarks/bench_mask_layouts.py        # on an H100/H200
"""
from __future__ import annotations

import torch
import triton

from glacompiler.op.dispatch import choose_kernel, validated_call

from bench_decode import copy_bandwidth

# (label, query heads, KV heads, head dim, batch, capacity, valid keys)
CASES = [
    ("Llama-3.2-1B layer (bench_hf.py's Llama)", 32, 8, 64, 64, 4096, 3001),
    ("GQA-8 per rank at TP 2 (bench_tp.py), B32 128K", 16, 4, 128, 32, 131072, 131072),
    ("GQA-8 per rank at TP 2 (bench_tp.py), B8 128K", 16, 4, 128, 8, 131072, 131072),
]


def kernel_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median") * 1e3


def layouts(heads_first_k, heads_first_v, lengths, mask, key_range, page_size: int = 64) -> dict:
    """label -> the op's (k_cache, v_cache, cache_seqlens, page_table, attn_mask, kv_range) for the same keys."""
    batch, kv_heads, capacity, head_dim = heads_first_k.shape
    k_view, v_view = heads_first_k.transpose(1, 2), heads_first_v.transpose(1, 2)
    k_seq, v_seq = k_view.contiguous(), v_view.contiguous()
    pages = torch.arange(batch * capacity // page_size, device=lengths.device, dtype=torch.int32).view(batch, -1)
    return {
        "sequence-first, lengths": (k_seq, v_seq, lengths, None, None, None),
        f"paged {page_size}, lengths": (k_seq.view(-1, page_size, kv_heads, head_dim),
                                        v_seq.view(-1, page_size, kv_heads, head_dim), lengths, pages, None, None),
        "heads-first view, lengths": (k_view, v_view, lengths, None, None, None),
        "heads-first view, bool mask": (k_view, v_view, None, None, mask, None),
        "heads-first view, bool mask + range": (k_view, v_view, None, None, mask, key_range),
    }


def main() -> None:
    device, dtype = torch.device("cuda"), torch.bfloat16
    bandwidth = copy_bandwidth()
    op = torch.ops.glacompiler.attention_with_kvcache.default
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    for label, heads, kv_heads, head_dim, batch, capacity, valid in CASES:
        generator = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(batch, 1, heads, head_dim, device=device, dtype=dtype, generator=generator)
        k = torch.randn(batch, kv_heads, capacity, head_dim, device=device, dtype=dtype, generator=generator)
        v = torch.randn(batch, kv_heads, capacity, head_dim, device=device, dtype=dtype, generator=generator)
        lengths = torch.full((batch,), valid, device=device, dtype=torch.int32)
        mask = (torch.arange(capacity, device=device) < valid).expand(batch, 1, 1, capacity).contiguous()
        key_range = torch.ops.glacompiler.mask_key_range(mask, batch, capacity)
        floor_us = 2 * batch * valid * kv_heads * head_dim * q.element_size() / bandwidth * 1e6
        print(f"\n## {label}: Hq {heads}, Hkv {kv_heads}, D {head_dim}, B {batch}, capacity {capacity}, valid "
              f"{valid}; floor {floor_us:.1f} us\n")
        print("| cache and keys | us | of floor | kernel config | max diff to the first row |")
        print("|---|---|---|---|---|")
        first = None
        for name, (k_cache, v_cache, seqlens, pages, attn_mask, kv_range) in layouts(k, v, lengths, mask,
                                                                                      key_range).items():
            args = (q, k_cache, v_cache, None, None, seqlens, pages, attn_mask, head_dim ** -0.5, True, 0, kv_range)
            out = op(*args)[0]
            first = out if first is None else first
            spec, shape, call, _, _ = validated_call(*args[:10], kv_range, 0.0, None, None, (-1, -1))
            family, config = choose_kernel(spec, shape, call)
            us = kernel_us(lambda: op(*args))
            print(f"| {name} | {us:.1f} | {floor_us / us:.2f} | {family.name} {config} | "
                  f"{(out.float() - first.float()).abs().max().item():.1e} |")
        del q, k, v, mask, first, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
