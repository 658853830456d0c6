"""The portable kernel on the cache layouts and masks the pass hands it (a transformers StaticCache: a heads-first
[B, H, S, D] cache seen as [B, S, H, D], a bool mask [B, 1, 1, S]), against the same keys as a paged or a
sequence-first cache with lengths: what a mask costs over lengths alone.

GQA and GTA (a tied state with a shared rope key, as bench_backend.py's plain decode hands it), bf16, Lq 1, the op's
own config (heuristic or tuned table). Kernel time by CUDA-graph replay (median of do_bench_cudagraph); floor =
valid cache bytes / copy bandwidth measured in the same run (bytes read + written of a device copy, so a read-only
kernel can pass 1.0). "mask + range" passes the mask's key range as the backend does
(mask_key_range once per step, hoisted out of the layers); "mask" reduces it per call. A mask dense in its range
is not read (the kernel's dense pass); the last row pokes one hole in the middle of each sequence's keys, so the
kernel's sparse pass reads the mask (its output differs: one key fewer).

    python benchmarks/bench_mask_layouts.py        # on an H100/H200
"""
from __future__ import annotations

import argparse

import torch
import triton

from glacompiler.op.dispatch import choose_kernel, validated_call

from bench_decode import copy_bandwidth

# (label, query heads, KV heads, head dim (GTA: the tied state), rope dim (GTA), batch, capacity, valid keys)
CASES = [
    ("Llama-3.2-1B layer (bench_hf.py's Llama)", 32, 8, 64, 0, 64, 4096, 3001),
    ("GQA-8 per rank at TP 2 (bench_tp.py), B32 128K", 16, 4, 128, 0, 32, 131072, 131072),
    ("GQA-8 per rank at TP 2 (bench_tp.py), B8 128K", 16, 4, 128, 0, 8, 131072, 131072),
    ("GTA-4 layer (bench_backend.py's GTA-4)", 16, 4, 128, 64, 64, 8192, 8192),
]


def kernel_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median") * 1e3


def layouts(heads_first_k, heads_first_v, rope_keys, lengths, mask, key_range, page_size: int = 64) -> dict:
    """label -> the op's (k_cache, v_cache, k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range) for the same
    keys. heads_first_v is None for a tied cache (GTA: V is the state itself), rope_keys [B, S, Dr] or None."""
    batch, _, capacity, _ = heads_first_k.shape
    k_view = heads_first_k.transpose(1, 2)
    v_view = None if heads_first_v is None else heads_first_v.transpose(1, 2)
    k_seq = k_view.contiguous()
    v_seq = None if v_view is None else v_view.contiguous()
    pages = torch.arange(batch * capacity // page_size, device=lengths.device, dtype=torch.int32).view(batch, -1)

    def paged(cache):
        return None if cache is None else cache.reshape(-1, page_size, *cache.shape[2:])

    return {
        "sequence-first, lengths": (k_seq, v_seq, rope_keys, lengths, None, None, None),
        f"paged {page_size}, lengths": (paged(k_seq), paged(v_seq), paged(rope_keys), lengths, pages, None, None),
        "heads-first view, lengths": (k_view, v_view, rope_keys, lengths, None, None, None),
        "heads-first view, bool mask": (k_view, v_view, rope_keys, None, None, mask, None),
        "heads-first view, bool mask + range": (k_view, v_view, rope_keys, None, None, mask, key_range),
    }


def case_tensors(heads, kv_heads, head_dim, rope_dim, batch, capacity, valid, device, dtype):
    """q, q_rope, heads-first K (or the tied state), V (None when tied), rope keys, lengths, mask, its key range."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    tied = rope_dim > 0
    q = randn(batch, 1, heads, head_dim - rope_dim if tied else head_dim)  # GTA: the state's un-rotated part
    q_rope = randn(batch, 1, heads, rope_dim) if tied else None
    k = randn(batch, kv_heads, capacity, head_dim)
    v = None if tied else randn(batch, kv_heads, capacity, head_dim)
    rope_keys = randn(batch, capacity, rope_dim) if tied else None
    lengths = torch.full((batch,), valid, device=device, dtype=torch.int32)
    mask = (torch.arange(capacity, device=device) < valid).expand(batch, 1, 1, capacity).contiguous()
    key_range = torch.ops.glacompiler.mask_key_range(mask, batch, capacity)
    return q, q_rope, k, v, rope_keys, lengths, mask, key_range


def valid_cache_bytes(kv_heads, head_dim, rope_dim, batch, valid, element_bytes) -> int:
    """K and V (or the tied state and the shared rope key) of the valid keys."""
    per_key = kv_heads * head_dim + rope_dim if rope_dim else 2 * kv_heads * head_dim
    return batch * valid * per_key * element_bytes


def holed(mask: torch.Tensor, valid: int) -> torch.Tensor:
    """The mask with its key valid // 2 ruled out in every sequence: no longer dense in its range."""
    mask = mask.clone()
    mask[..., valid // 2] = False
    return mask


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    bandwidth = copy_bandwidth()
    op = torch.ops.glacompiler.attention_with_kvcache.default
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    for label, heads, kv_heads, head_dim, rope_dim, batch, capacity, valid in CASES:
        q, q_rope, k, v, rope_keys, lengths, mask, key_range = case_tensors(
            heads, kv_heads, head_dim, rope_dim, batch, capacity, valid, device, dtype)
        floor_us = valid_cache_bytes(kv_heads, head_dim, rope_dim, batch, valid, q.element_size()) / bandwidth * 1e6
        print(f"\n## {label}: Hq {heads}, Hkv {kv_heads}, D {head_dim}{f' (tied) + rope {rope_dim}' if rope_dim else ''}, "
              f"B {batch}, capacity {capacity}, valid {valid}; floor {floor_us:.1f} us\n")
        print("| cache and keys | us | of floor | kernel config | max diff to the first row |")
        print("|---|---|---|---|---|")
        first = None
        scale = head_dim ** -0.5  # GTA: the query's un-rotated part and its rope part span the state's width
        rows = layouts(k, v, rope_keys, lengths, mask, key_range)
        holed_mask = holed(mask, valid)
        views = rows["heads-first view, bool mask + range"][:5]  # the caches, no lengths, no page table
        rows["heads-first view, bool mask with a hole + range"] = (
            *views, holed_mask, torch.ops.glacompiler.mask_key_range(holed_mask, batch, capacity))
        for name, (k_cache, v_cache, k_rope, seqlens, pages, attn_mask, kv_range) in rows.items():
            args = (q, k_cache, v_cache, q_rope, k_rope, seqlens, pages, attn_mask, scale, True, 0, kv_range)
            out = op(*args)[0]
            first = out if first is None else first
            spec, shape, call, _, _ = validated_call(*args[:10], kv_range, 0.0, None, None, (-1, -1))
            family, config = choose_kernel(spec, shape, call)
            us = kernel_us(lambda: op(*args))
            diff = "-" if attn_mask is holed_mask else f"{(out.float() - first.float()).abs().max().item():.1e}"
            print(f"| {name} | {us:.1f} | {floor_us / us:.2f} | {family.name} {config} | {diff} |")
        del q, q_rope, k, v, rope_keys, mask, holed_mask, rows, views, first, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
