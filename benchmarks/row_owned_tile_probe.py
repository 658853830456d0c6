"""GLA-2's row-owned tiles of the Hopper latent kernel (one warpgroup, and the ping-pong 128-row tile; each with and
without the lazy rescale) against the tuned table's config and FlashAttention-3 (where `flash_attn_interface`
imports) in one run. First the error against the fp32 reference on keys scaled page by page (row maxima that jump:
the rescale branch runs), then kernel times by CUDA-graph replay, the median of 3 rounds in rotating order, on the
grid's data (bf16, page 64, permuted page table, full lengths, causal). Run from the repository root with the wheel
installed (about 4 minutes on an H100):

    python benchmarks/row_owned_tile_probe.py [--rows 128:8192:2,8:32768:2]
"""
import argparse
import statistics

import torch

import glacompiler
from glacompiler.kernels import KernelCall
from glacompiler.kernels.latent_hopper import LatentHopperConfig
from glacompiler.op.dispatch import choose_kernel
from glacompiler.op.validation import validate_inputs
from glacompiler.reference import attention_with_kvcache_reference

from ab_decode import make_inputs
from decode_grid import fa3_call, fa3_function, rotating_rounds

ROWS = "128:8192:2,8:32768:2,128:8192:4,8:32768:4,32:4096:4,32:4096:2,1:65536:4"
SCALE = (256 + 64) ** -0.5


def table_config(kwargs: dict) -> LatentHopperConfig:
    spec, shape = validate_inputs(kwargs["q"], kwargs["k_cache"], None, kwargs["q_rope"], kwargs["k_rope_cache"],
                                  kwargs["cache_seqlens"], kwargs["page_table"], None, None, None)
    call = KernelCall(kwargs["q"], kwargs["k_cache"], None, kwargs["q_rope"], kwargs["k_rope_cache"],
                      kwargs["cache_seqlens"], kwargs["page_table"], None, SCALE, True)
    return choose_kernel(spec, shape, call)[1]


def variants(base: LatentHopperConfig) -> dict:
    """The table's config, and the row-owned tiles at its split count: one warpgroup and the ping-pong 128-row tile,
    each lazy or not, and the ping-pong tile on 128-key blocks."""
    splits = base.num_splits
    return {"table": base, "one_warpgroup": LatentHopperConfig(splits, True, 64, one_warpgroup=True, lazy_rescale=False),
            "one_warpgroup_lazy": LatentHopperConfig(splits, True, 64, one_warpgroup=True, lazy_rescale=True),
            "ping_pong": LatentHopperConfig(splits, True, 64, warp_specialized=True, lazy_rescale=False),
            "ping_pong_lazy": LatentHopperConfig(splits, True, 64, warp_specialized=True, lazy_rescale=True),
            "ping_pong_128": LatentHopperConfig(splits, True, 128, warp_specialized=True, lazy_rescale=False)}


def closure(kwargs: dict, config: LatentHopperConfig):
    return lambda: glacompiler.attention_with_kvcache_config(**kwargs, config=config, softmax_scale=SCALE)[0]


def check_errors() -> None:
    for query_len in (2, 3):  # 128 rows a latent head, and 192 (a half-empty 128-row program)
        kwargs = make_inputs("gla2", 6, 1024, query_len, 64)
        kwargs["cache_seqlens"] = torch.tensor([1, 63, 64, 65, 700, 1024], device="cuda", dtype=torch.int32)
        factor = 1 + 7 * torch.rand(kwargs["k_cache"].shape[0], 1, 1, 1, device="cuda")  # maxima that jump
        kwargs["k_cache"] = (kwargs["k_cache"].float() * factor).to(torch.bfloat16)
        reference = attention_with_kvcache_reference(**kwargs, softmax_scale=SCALE, out_dtype=torch.float32)[0]
        errors = {tag: (closure(kwargs, config)().float() - reference).abs().max().item()
                  for tag, config in variants(LatentHopperConfig(1, True, 64, one_warpgroup=True)).items()
                  if tag != "table"}
        print(f"Lq {query_len}: max |out - fp32 reference|, keys scaled 1-8x by page: "
              + ", ".join(f"{tag} {error:.2e}" for tag, error in errors.items()), flush=True)


def time_row(batch: int, length: int, query_len: int, fa3) -> None:
    kwargs = make_inputs("gla2", batch, length, query_len, 64)
    base = table_config(kwargs)
    calls = {tag: closure(kwargs, config) for tag, config in variants(base).items()}
    if fa3 is not None:
        calls["fa3"] = fa3_call(fa3, "gla2", kwargs, SCALE)
    outputs = {tag: call().float() for tag, call in calls.items()}
    times = rotating_rounds(calls, 3)
    median = {tag: statistics.median(values) for tag, values in times.items()}
    print(f"B{batch} S{length} Lq{query_len}, table {base.to_dict()}", flush=True)
    for tag in calls:
        print(f"   {tag:20s} {median[tag]:8.1f} us  table / this {median['table'] / median[tag]:.3f}  "
              f"|out - table's| {(outputs[tag] - outputs['table']).abs().max().item():.1e}  "
              f"rounds {' '.join(f'{value:.1f}' for value in times[tag])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=ROWS, help="batch:cache length:query tokens, comma-separated")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    check_errors()
    fa3 = fa3_function()
    for row in args.rows.split(","):
        time_row(*(int(part) for part in row.split(":")), fa3)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
