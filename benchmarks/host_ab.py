"""Host time per eager op call (repeat calls of one metadata, the GPU never holding the host back), for the
layouts a decode step calls, with SDPA's call on the GQA shape as the yardstick (issue 13 goal 2: 30 us).

One process measures the glacompiler it imports; for a same-run A/B install two trees and alternate processes:

    for r in 1 2 3; do for t in base new; do PYTHONPATH=/tmp/site_$t python benchmarks/host_ab.py $t; done; done

Each row: the best of 7 rounds of 1000 back-to-back calls, and the same in units of SDPA's call (the yardstick, which
no code of ours runs), timed just before and just after the row in the same process: a host that runs slower in one
process than in another, or slower later in a process, moves the yardstick with the rows. The last line gives the
yardstick's spread over the process (its slowest over its fastest)."""
from __future__ import annotations

import argparse
import time

import torch

import glacompiler


YARDSTICK = "SDPA (GQA 32/8/64, enable_gqa)"


def burst_us(fn, calls: int, synchronize) -> float:
    """Host us per call of `calls` back-to-back calls begun with the device idle (synchronize runs first): while the
    burst's launches fit the device's queue, the host never waits for the device."""
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def host_us_per_call(fn, calls: int = 1000, rounds: int = 7, synchronize=None) -> float:
    """The best of `rounds` bursts of `calls` back-to-back calls, after 100 calls to warm up; synchronize (default:
    CUDA's) runs before each burst and after the last."""
    synchronize = synchronize or torch.cuda.synchronize
    for _ in range(100):
        fn()
    best = min(burst_us(fn, calls, synchronize) for _ in range(rounds))
    synchronize()
    return best


def rows(device) -> list:
    op = torch.ops.glacompiler.attention_with_kvcache.default
    bf16, batch = torch.bfloat16, 64

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=bf16)

    # GLA-2 at XL widths (16 query heads, 2 latent heads of 256 + rope 64), a 256-slot cache: Hopper latent kernel
    q, cache, q_rope, k_rope = randn(batch, 1, 16, 256), randn(batch, 256, 2, 256), randn(batch, 1, 16, 64), \
        randn(batch, 256, 64)
    lengths = torch.full((batch,), 256, device=device, dtype=torch.int32)
    mask = torch.ones(batch, 1, 1, 256, device=device, dtype=torch.bool)
    key_range = torch.ops.glacompiler.mask_key_range(mask, batch, 256)
    # GQA at Llama-3.2-1B widths (32 query / 8 KV heads of 64), a 512-slot cache: portable kernel
    q_gqa, k, v = randn(batch, 1, 32, 64), randn(batch, 512, 8, 64), randn(batch, 512, 8, 64)
    lengths_gqa = torch.full((batch,), 500, device=device, dtype=torch.int32)
    mask_gqa = torch.ones(batch, 1, 1, 512, device=device, dtype=torch.bool)
    key_range_gqa = torch.ops.glacompiler.mask_key_range(mask_gqa, batch, 512)
    q_sdpa, k_sdpa, v_sdpa = q_gqa.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    # Split calls (a few sequences, a long cache: the partials and their combine; "splits" in their names): GQA 32/8/64,
    # GTA 16/4 (128 + rope 64) and MLA (128 query heads, latent 512 + rope 64, the Hopper latent kernel) at B1 S4K,
    # short enough that the GPU keeps up.
    q_one, k_one, v_one = randn(1, 1, 32, 64), randn(1, 4096, 8, 64), randn(1, 4096, 8, 64)
    lengths_one = torch.full((1,), 4096, device=device, dtype=torch.int32)
    q_mla, cache_mla, q_rope_mla, k_rope_mla = randn(1, 1, 128, 512), randn(1, 4096, 1, 512), randn(1, 1, 128, 64), \
        randn(1, 4096, 64)
    q_gta, cache_gta, q_rope_gta, k_rope_gta = randn(1, 1, 16, 128), randn(1, 4096, 4, 128), randn(1, 1, 16, 64), \
        randn(1, 4096, 64)
    return [
        ("GLA-2 XL op, lengths", lambda: op(q, cache, None, q_rope, k_rope, lengths, None, None, 0.05, False, 0)),
        ("GLA-2 XL op, mask + kv_range",
         lambda: op(q, cache, None, q_rope, k_rope, None, None, mask, 0.05, False, 0, key_range)),
        ("GLA-2 XL op, mask", lambda: op(q, cache, None, q_rope, k_rope, None, None, mask, 0.05, False, 0)),
        ("GLA-2 XL wrapper, lengths",
         lambda: glacompiler.attention_with_kvcache(q, cache, q_rope=q_rope, k_rope_cache=k_rope,
                                                    cache_seqlens=lengths, softmax_scale=0.05)),
        ("GQA 32/8/64 op, lengths", lambda: op(q_gqa, k, v, None, None, lengths_gqa, None, None, 0.125, True, 0)),
        ("GQA 32/8/64 op, mask + kv_range",
         lambda: op(q_gqa, k, v, None, None, None, None, mask_gqa, 0.125, True, 0, key_range_gqa)),
        ("GQA 32/8/64 op, mask", lambda: op(q_gqa, k, v, None, None, None, None, mask_gqa, 0.125, True, 0)),
        ("GQA 32/8/64 wrapper, lengths",
         lambda: glacompiler.attention_with_kvcache(q_gqa, k, v, cache_seqlens=lengths_gqa, softmax_scale=0.125)),
        ("GQA 32/8/64 wrapper, mask",
         lambda: glacompiler.attention_with_kvcache(q_gqa, k, v, attn_mask=mask_gqa, softmax_scale=0.125)),
        ("GQA 32/8/64 wrapper, mask + kv_range",
         lambda: glacompiler.attention_with_kvcache(q_gqa, k, v, attn_mask=mask_gqa, kv_range=key_range_gqa,
                                                    softmax_scale=0.125)),
        ("GQA 32/8/64 B1 S4K op, 8 splits",
         lambda: op(q_one, k_one, v_one, None, None, lengths_one, None, None, 0.125, True, 8)),
        ("GQA 32/8/64 B1 S4K wrapper, 8 splits",
         lambda: glacompiler.attention_with_kvcache(q_one, k_one, v_one, cache_seqlens=lengths_one, num_splits=8)),
        ("GTA 16/4 B1 S4K wrapper, 8 splits",
         lambda: glacompiler.attention_with_kvcache(q_gta, cache_gta, q_rope=q_rope_gta, k_rope_cache=k_rope_gta,
                                                    cache_seqlens=lengths_one, num_splits=8)),
        ("MLA B1 S4K wrapper, 4 splits",
         lambda: glacompiler.attention_with_kvcache(q_mla, cache_mla, q_rope=q_rope_mla, k_rope_cache=k_rope_mla,
                                                    cache_seqlens=lengths_one, num_splits=4)),
        (YARDSTICK, lambda: torch.nn.functional.scaled_dot_product_attention(q_sdpa, k_sdpa, v_sdpa, enable_gqa=True)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label", nargs="?", default="op", help="the first column (which tree this is)")
    label = parser.parse_args().label
    with torch.no_grad():
        measured = []
        for name, fn in rows(torch.device("cuda")):  # warm every row first: the host's clocks and caches, not the order
            try:
                host_us_per_call(fn, calls=200)
            except TypeError as error:  # an argument an older tree's op does not take (an A/B's base)
                print(f"{label:>4} {name:<40} not run ({error})", flush=True)
                continue
            measured.append((name, fn))
        yardstick = dict(measured).pop(YARDSTICK, None)
        if yardstick is None:
            raise SystemExit(f"the yardstick ({YARDSTICK}) did not run: rows cannot be given in its units")
        sticks = [host_us_per_call(yardstick)]
        for name, fn in measured:
            if name == YARDSTICK:
                continue
            us = host_us_per_call(fn)
            sticks.append(host_us_per_call(yardstick))
            unit = (sticks[-2] + sticks[-1]) / 2  # the yardstick just before and just after the row
            print(f"{label:>4} {name:<40} {us:7.2f} us {us / unit:6.2f} SDPA", flush=True)
        print(f"{label:>4} {YARDSTICK:<40} {min(sticks):7.2f} us, slowest {max(sticks) / min(sticks):.2f}x that "
              f"over {len(sticks)} timings", flush=True)


if __name__ == "__main__":
    main()
