"""Decode-attention speed against the roofline floor, on one GPU.

For each case (issue 2 section 6: MLA, GLA-2, GTA, GQA; batch 128, cache 8192, page 64, Lq 1 and 2) it
prints our kernel's time (the op's default kernel with the heuristic config and, with --variants, the best of
a few others; for latent cases on Hopper also the portable kernels' time), GB/s, TFLOP/s,
the fraction of the roofline floor (bytes / measured copy bandwidth vs flops / measured bf16 matmul rate),
and the ratio to torch.compile of the reference math and, for GQA, to SDPA. Run:
    python benchmarks/bench_decode.py [--variants] [--json out.json]

With --grid it prints issue 13's grid instead (decode_grid.py): every kind at B128 S8K Lq 1/2, B8 S32K, B32 S4K
Lq 4 and B1 S64K, the op as users call it, kernel times by CUDA-graph replay over interleaved rounds, against the
floor, SDPA (GQA) and FlashAttention-3 where `flash_attn_interface` imports:
    python benchmarks/bench_decode.py --grid [--rounds 3] [--neighbours] [--kinds mla,gla2,gla8,gta,gqa]
--shapes 1x65536,32x4096 keeps the grid's rows of those batch x cache shapes (to finish a run a time limit cut).
"""
from __future__ import annotations

import argparse
import itertools
import dataclasses
import json
import math

import torch
import torch.nn.functional as F
import triton

import glacompiler
from glacompiler.kernels import KernelCall
from glacompiler.kernels.common.splits import MAX_SPLITS, device_multiprocessors
from glacompiler.kernels.latent_hopper import LatentHopperConfig
from glacompiler.kernels.portable import PortableConfig
from glacompiler.kernels.portable.config import PAGED_TWO_BUFFER_STAGES, heuristic_config
from glacompiler.op.dispatch import choose_kernel
from glacompiler.op.validation import validate_inputs
from glacompiler.presets import PAPER_SPECS
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.reference import attention_with_kvcache_reference, logical_cache


def median_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes per second of a large device copy, counting bytes read plus bytes written."""
    src = torch.randn(512 * 2**20, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / (median_ms(lambda: dst.copy_(src)) * 1e-3)


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / (median_ms(lambda: a @ b) * 1e-3)


def problem_cost(spec, q, lengths) -> tuple[float, float]:
    """(bytes, flops) the op must move and do at the least: the cache read once, q read, out written."""
    m = spec
    batch, query_len = q.shape[:2]
    tokens = int(lengths.sum())
    elem = q.element_size()
    bytes_moved = tokens * m.cache_elements_per_token * elem
    bytes_moved += batch * query_len * m.num_q_heads * (m.head_dim_q + m.rope_dim + m.head_dim_v) * elem
    flops = 2 * query_len * m.num_q_heads * tokens * (m.head_dim_q + m.rope_dim + m.head_dim_v)
    return bytes_moved, flops


def use_prefix_mask(kwargs: dict) -> None:
    """What backend="gla" passes for a static cache read over its whole length: a bool mask of the filled
    prefix instead of cache_seqlens (same function, another kernel path). Edits the op's kwargs in place."""
    page_table = kwargs["page_table"]
    capacity = page_table.shape[1] * kwargs["k_cache"].shape[1] if page_table is not None else kwargs["k_cache"].shape[1]
    lengths = kwargs["cache_seqlens"]
    filled = torch.arange(capacity, device=lengths.device) < lengths[:, None]
    kwargs.update(attn_mask=filled[:, None, None, :], cache_seqlens=None, causal=False)


def use_draft_mask(kwargs: dict) -> None:
    """Speculative decoding as a model writes it: a bool mask per draft token [B, 1, Lq, S] (the filled prefix,
    and each draft token sees the ones before it) instead of cache_seqlens and causal. Edits kwargs in place."""
    use_prefix_mask(kwargs)
    query_len = kwargs["q"].shape[1]
    lengths = kwargs["attn_mask"].sum(dim=-1, dtype=torch.int32)[:, 0, 0]
    keys = torch.arange(kwargs["attn_mask"].shape[-1], device=lengths.device)
    last_visible = lengths[:, None] - query_len + torch.arange(query_len, device=lengths.device)  # [B, Lq]
    kwargs["attn_mask"] = (keys[None, None, :] <= last_visible[:, :, None])[:, None]


def variants(base: PortableConfig, rows: int, paged: bool) -> list[PortableConfig]:
    """A few neighbours of the heuristic config, one knob at a time (paged: the depths that change the key block's
    buffers, PortableConfig's pipeline_stages)."""
    out = []
    for block_n in (16, 32, 64):
        out.append(dataclasses.replace(base, block_n=block_n))
    for block_m in (16, 32, 64):
        if block_m <= max(16, 2 * rows):
            out.append(dataclasses.replace(base, block_m=block_m))
    out.append(dataclasses.replace(base, num_warps=4 if base.num_warps == 8 else 8))
    for stages in (2, PAGED_TWO_BUFFER_STAGES) if paged else (1, 3, 4):
        out.append(dataclasses.replace(base, num_stages=stages))
    out.append(dataclasses.replace(base, preload_q=not base.preload_q))
    for factor in (0.5, 2):
        splits = max(1, min(MAX_SPLITS, round(base.num_splits * factor)))
        out.append(dataclasses.replace(base, num_splits=splits))
    if rows >= 64:  # wide latent groups: try wider row blocks and Dv splits too
        for block_m, dv_split, warps, stages in itertools.product((32, 64, 128), (1, 2), (4, 8), (2, 3)):
            if block_m <= rows:
                out.append(dataclasses.replace(base, block_m=block_m, dv_split=dv_split, num_warps=warps,
                                               num_stages=stages, preload_q=False, block_n=32))
    unique = []
    for config in out:
        if config != base and config not in unique:
            unique.append(config)
    return unique


# Flags of one mode only (argparse names): a flag of the other mode would be ignored, so it is refused.
GRID_FLAGS = ("kinds", "rounds", "neighbours", "shapes")
CASE_FLAGS = ("batch", "seqlen", "cases", "q_lens", "variants", "prefix_mask", "draft_mask", "skip_baselines")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--page-size", type=int, default=64)
    parser.add_argument("--cases", default="mla,gla2,gta,gqa")
    parser.add_argument("--q-lens", default="1,2")
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--prefix-mask", action="store_true",
                        help="pass the filled prefix as a bool attn_mask instead of cache_seqlens")
    parser.add_argument("--draft-mask", action="store_true",
                        help="pass a bool attn_mask per draft token (speculative decoding) instead of cache_seqlens")
    parser.add_argument("--skip-baselines", action="store_true", help="time our kernels only (no torch.compile/SDPA)")
    parser.add_argument("--json")
    parser.add_argument("--grid", action="store_true", help="issue 13's grid (see decode_grid.py)")
    parser.add_argument("--kinds", default="mla,gla2,gla8,gta,gqa", help="with --grid: the kinds to time")
    parser.add_argument("--rounds", type=int, default=3, help="with --grid: interleaved rounds per row")
    parser.add_argument("--neighbours", action="store_true",
                        help="with --grid: every (B, S) of the grid at Lq 1, 2 and 4")
    parser.add_argument("--shapes", default="",
                        help="with --grid: only these BxS of it, comma-separated (1x65536,32x4096)")
    # argparse fills a default only where the namespace lacks the name: a flag still holding not_given was not given
    # (a flag given at its default value counts as given)
    not_given = object()
    args = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(GRID_FLAGS + CASE_FLAGS, not_given)))
    given = [name for name in (CASE_FLAGS if args.grid else GRID_FLAGS) if getattr(args, name) is not not_given]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(given))
        parser.error(f"{flags}: not for --grid" if args.grid else f"{flags}: for --grid only")
    for name in GRID_FLAGS + CASE_FLAGS:
        if getattr(args, name) is not_given:
            setattr(args, name, parser.get_default(name))
    return args


def main() -> None:
    args = parse_arguments()
    if args.grid:
        from decode_grid import run_grid

        return run_grid(args.kinds.split(","), args.rounds, args.neighbours, args.page_size, args.json, args.shapes)

    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name()
    bandwidth, flop_rate = copy_bandwidth(), matmul_rate()
    print(f"# {gpu}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"# copy bandwidth {bandwidth / 1e9:.0f} GB/s, bf16 matmul {flop_rate / 1e12:.0f} TFLOP/s")
    results = []
    for name in args.cases.split(","):
        case_spec = PAPER_SPECS[name]
        for query_len in (int(x) for x in args.q_lens.split(",")):
            problem = make_decode_problem(
                case_spec, args.batch, query_len, args.seqlen, dtype=torch.bfloat16, device=device,
                page_size=args.page_size, seqlens=[args.seqlen] * args.batch, poison=False,
            )
            kw = problem.kwargs
            lengths = kw["cache_seqlens"]
            if args.prefix_mask:
                use_prefix_mask(kw)
            elif args.draft_mask:
                use_draft_mask(kw)
            spec, shape = validate_inputs(kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"], kw["k_rope_cache"],
                                          kw["cache_seqlens"], kw["page_table"], kw["attn_mask"], None, None)
            # The op's own choice of kernel (the Hopper latent kernel where it applies), with the heuristic
            # config for the portable kernels (the tuned table is measured by `glacompiler autotune`).
            portable = heuristic_config(spec, args.batch, args.seqlen, query_len, device_multiprocessors(device))
            call = KernelCall(kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"], kw["k_rope_cache"],
                              kw["cache_seqlens"], kw["page_table"], kw["attn_mask"], 1.0, True)
            family, base = choose_kernel(spec, shape, call)
            if isinstance(base, PortableConfig):
                base = portable
            # Correctness on this very problem before any timing.
            out, lse = glacompiler.attention_with_kvcache_config(**kw, config=base)
            check_fa_rule(out, lse, problem)
            timed = {base: median_ms(lambda: glacompiler.attention_with_kvcache_config(**kw, config=base))}
            portable_ms = math.nan
            if isinstance(base, LatentHopperConfig):  # the portable kernels on the same call, for comparison
                portable_ms = median_ms(lambda: glacompiler.attention_with_kvcache_config(**kw, config=portable))
            if args.variants:
                if isinstance(base, LatentHopperConfig):
                    candidates = [dataclasses.replace(base, num_splits=n)
                                  for n in (max(1, base.num_splits // 2), min(MAX_SPLITS, 2 * base.num_splits))]
                else:
                    candidates = variants(base, spec.group_size * query_len, spec.paged)
                for config in candidates:
                    try:
                        out, lse = glacompiler.attention_with_kvcache_config(**kw, config=config)
                        check_fa_rule(out, lse, problem)
                        timed[config] = median_ms(lambda: glacompiler.attention_with_kvcache_config(**kw, config=config))
                    except Exception as error:  # out of resources etc.: report, keep going
                        print(f"  variant {config} failed: {type(error).__name__}: {str(error)[:120]}")
            best = min(timed, key=timed.get)

            bytes_moved, flops = problem_cost(spec, kw["q"], lengths)
            floor_ms = max(bytes_moved / bandwidth, flops / flop_rate) * 1e3
            # Baselines on the same data in logical (contiguous) order.
            k_lin = logical_cache(kw["k_cache"], kw["page_table"], lengths).contiguous()
            v_lin = None if kw["v_cache"] is None else logical_cache(kw["v_cache"], kw["page_table"], lengths).contiguous()
            kr_lin = None if kw["k_rope_cache"] is None else logical_cache(kw["k_rope_cache"], kw["page_table"], lengths).contiguous()
            compiled_ms = sdpa_ms = math.nan
            if not args.skip_baselines:
                compiled = torch.compile(attention_with_kvcache_reference)
                ref_args = dict(q_rope=kw["q_rope"], k_rope_cache=kr_lin, cache_seqlens=lengths, causal=True,
                                compute_dtype=torch.bfloat16)
                compiled(kw["q"], k_lin, v_lin, **ref_args)
                compiled_ms = median_ms(lambda: compiled(kw["q"], k_lin, v_lin, **ref_args))
            if not args.skip_baselines and not spec.tied and spec.rope_dim == 0:
                q_t = kw["q"].transpose(1, 2)
                k_t, v_t = k_lin.transpose(1, 2), v_lin.transpose(1, 2)
                sdpa_ms = median_ms(lambda: F.scaled_dot_product_attention(q_t, k_t, v_t, enable_gqa=True))
            row = dict(
                case=name, q_len=query_len, ms=timed[base], best_ms=timed[best], best_config=best.to_dict(),
                heuristic_config=base.to_dict(), floor_ms=floor_ms, gbps=bytes_moved / (timed[best] * 1e-3) / 1e9,
                tflops=flops / (timed[best] * 1e-3) / 1e12, floor_fraction=floor_ms / timed[best],
                compiled_ms=compiled_ms, sdpa_ms=sdpa_ms, portable_ms=portable_ms,
                kernel=family.name,
            )
            results.append(row)
            print(f"  {name} Lq={query_len}: default {timed[base] * 1e3:.0f} us, best {timed[best] * 1e3:.0f} us "
                  f"({best}), floor {floor_ms * 1e3:.0f} us, portable kernels {portable_ms * 1e3:.0f} us", flush=True)

    print("\n| case | Lq | kernel | default us | best us | GB/s | TFLOP/s | of floor | portable us | compiled ref us | "
          "vs compiled | SDPA us | vs SDPA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['q_len']} | {r['kernel']} | {r['ms'] * 1e3:.0f} | {r['best_ms'] * 1e3:.0f} | {r['gbps']:.0f} | "
              f"{r['tflops']:.0f} | {r['floor_fraction']:.2f} | {r['portable_ms'] * 1e3:.0f} | {r['compiled_ms'] * 1e3:.0f} | "
              f"{r['compiled_ms'] / r['best_ms']:.1f}x | {r['sdpa_ms'] * 1e3:.0f} | {r['sdpa_ms'] / r['best_ms']:.2f}x |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(gpu=gpu, bandwidth=bandwidth, flop_rate=flop_rate, results=results), handle, indent=1)


if __name__ == "__main__":
    main()
