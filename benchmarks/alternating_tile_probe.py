"""The warp-specialised latent tile's two schedules on one wheel: the alternating one against the score / value split,
at the heuristic's split counts (a build whose kernels changed finds the table stale, so two wheels time the same
configs). First correctness on ragged lengths, splits, sinks, a mask and a window against the fp32 reference, then
times by CUDA-graph replay in rotating rounds. Run from the repository root with the wheel installed (about 90 s on
an H200); run it on two builds' wheels to compare a template change."""
import argparse
import dataclasses
import sys

import torch
import triton.testing

sys.path.insert(0, "benchmarks")
import glacompiler
from glacompiler.kernels.latent_hopper import LatentHopperConfig
from ab_decode import make_inputs
from glacompiler.kernels.latent_hopper.config import heuristic_config
from glacompiler.op.validation import validate_inputs
from glacompiler.reference import attention_with_kvcache_reference as ref

argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()


def heuristic_choice(kw):
    # The heuristic's config, not a table's, so that two builds time the same split counts.
    spec, shape = validate_inputs(kw["q"], kw["k_cache"], kw.get("v_cache"), kw["q_rope"], kw["k_rope_cache"],
                                  kw["cache_seqlens"], kw["page_table"], None, None, None)
    return heuristic_config(spec, shape, torch.cuda.get_device_properties(0).multi_processor_count,
                            torch.cuda.get_device_name(0))

def run(kw, cfg):
    return glacompiler.attention_with_kvcache_config(**kw, config=cfg)[0]

# 1. correctness: ragged lengths (odd/even block counts, partial blocks), splits, sinks, masks, Lq 1..4
torch.manual_seed(0)
print("correctness (max |alt - ref| vs max |ws - ref|, fp32 reference):", flush=True)
for lq, splits, extra in [(1, 3, {}), (4, 1, {"mask": True}), (2, 2, {"sinks": True}), (3, 4, {"window": (100, 0)}),
                         (1, 1, {"sinks": True, "window": (300, 0)})]:
    kw = make_inputs("mla", 6, 1024, lq, 64)
    kw["cache_seqlens"] = torch.tensor([1, 63, 64, 65, 700, 1024], device="cuda", dtype=torch.int32)
    if extra.get("sinks"):
        kw["sinks"] = torch.randn(128, device="cuda")
    if extra.get("mask"):
        kw["attn_mask"] = torch.rand(6, 1, lq, 1024, device="cuda") > 0.3
    if "window" in extra:
        kw["window_size"] = extra["window"]
    r = ref(**kw, out_dtype=torch.float32)[0]
    ws = run(kw, LatentHopperConfig(splits, warp_specialized=True, alternating=False)).float()
    alt = run(kw, LatentHopperConfig(splits, warp_specialized=True, alternating=True)).float()
    print(f"  lq{lq} splits{splits} {list(extra)}: alt {(alt - r).abs().max().item():.3e}  "
          f"ws {(ws - r).abs().max().item():.3e}  alt-ws {(alt - ws).abs().max().item():.3e} "
          f"nan {alt.isnan().any().item()}", flush=True)

def graph_us(kw, cfg):
    def call():
        return run(kw, cfg)

    call()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(call, rep=100, return_mode="median") * 1e3

rows = [("mla", 128, 8192, 1), ("mla", 128, 8192, 2), ("mla", 8, 32768, 1), ("mla", 32, 4096, 1), ("mla", 32, 4096, 4),
        ("mla", 1, 65536, 1)]
print("times us (median of 3 rounds):", flush=True)
for name, b, s, lq in rows:
    kw = make_inputs(name, b, s, lq, 64)
    h = heuristic_choice(kw)
    variants = {"ws": dataclasses.replace(h, alternating=False, warp_specialized=True),
                "alt": dataclasses.replace(h, alternating=True, warp_specialized=True)}
    o_ws, o_alt = run(kw, variants["ws"]).float(), run(kw, variants["alt"]).float()
    res = {}
    for rnd in range(3):
        for tag, cfg in (list(variants.items()) if rnd % 2 == 0 else list(variants.items())[::-1]):
            res.setdefault(tag, []).append(graph_us(kw, cfg))
    ws_t, alt_t = sorted(res["ws"])[1], sorted(res["alt"])[1]
    print(f"  {name} B{b} S{s} Lq{lq} splits {h.num_splits}: ws {ws_t:.1f}  alt {alt_t:.1f}  alt/ws {alt_t/ws_t:.3f}  "
          f"|alt-ws| {(o_alt - o_ws).abs().max().item():.2e}", flush=True)
    del kw
    torch.cuda.empty_cache()
