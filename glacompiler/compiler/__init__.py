"""The `gla` torch.compile backend: attention sites in the ATen graph become
torch.ops.glacompiler.attention_with_kvcache; everything else is compiled by Inductor.

    torch.compile(model, backend="gla")                        # registered name (and entry point)
    torch.compile(model, backend=glacompiler.backend(cudagraphs=True))
    print(glacompiler.compile_report())                        # what happened at each attention site

Importing this package is light: the backend class (and with it Inductor and dynamo) loads on first access
to backend, GlaBackend, gla_backend or register_gla_backend, and registers the name "gla" with dynamo as it
loads. The report (report.py) needs neither.

What is recognised, and what it becomes (details: the tables in find/softmax.py, find/sdpa.py,
trace/score_side.py, trace/masks.py, trace/layout.py). Every index is followed exactly (trace/layout.py): a
site that is not the op's math is skipped with the reason, never approximated.

| found in the graph                                      | argument of the op                               |
|---------------------------------------------------------|--------------------------------------------------|
| SDPA (aten op or flash/efficient/cudnn/flash_for_cpu)   | q, k, v as [B, Lq, H, D] views; scale            |
|   enable_gqa (Hq = G * Hkv), is_causal                  |   Hkv = K's heads; causal -> explicit mask       |
| softmax(scale * q.k + mask) @ v, any of matmul/bmm/einsum| the same                                        |
|   scale by mul or div, folded from q/k (math SDPA)      |   softmax_scale                                  |
|   softmax decomposed, safe softmax, fp32 upcast + cast  |   (computed in fp32 by the op)                   |
| HF repeat_kv (expand + reshape), repeat_interleave, a   | k_cache/v_cache with Hkv heads, read in place    |
|   broadcast KV head (MQA)                               |                                                  |
| cat(tied[..., :d_h - d_R], rope_key over heads), V=tied | GTA: k_cache = tied, v_cache None, q_rope/k_rope |
| q_lat . c + q_pe . k_pe, softmax, . c                   | MLA/GLA: k_cache = latent, v_cache None, rope    |
|   query heads grouped onto h_c latent heads by a view   |   Hkv = h_c                                      |
| masked_fill / where(mask, s, -inf or < -1e30)           | boolean attn_mask (True = attend)                |
| s + where(mask, 0, -inf or finfo.min) (HF eager, SDPA)  | boolean attn_mask (blocks it rules out skipped)  |
| s + other float bias                                    | additive attn_mask (times any later scale)       |
| K, V = per-head linear maps of one latent (expanding    | MLA/GLA absorbed (absorb/): q @ W_UK, the op on   |
|   MLA/GLA, transformers' DeepSeek-V2/V3), rope key      |   the latent cache, @ W_UV; form "... (absorbed)" |
|   joined by cat, new_empty + copy_, or its own term     |   (prefill keeps the expanded form)              |
| static cache written by index_copy_/index_put_ first    | the written cache, read in place (no copy)       |
| cache[:, :, :n] (growing length)                        | a prefix view, n symbolic is fine                |

Left to Inductor (reported with the reason): more than 16 query tokens (prefill), dims the op does not
take (head dims not multiples of 8, > 576, Dv > 512, rope not 16/32/48/64, float64), dropout, scores or
probabilities used elsewhere, a mask that varies across heads, a softmax over anything but the keys, keys or
values read with strides that need a copy, training graphs (the op has no backward).

The pass, stage by stage (graph_pass.py runs them on each graph Inductor compiles):

    find/      the sites: SDPA calls, and softmaxes over a q.k product that feed a product
    absorb/    a site whose K and V expand a latent through weights, planned and emitted absorbed (else below)
    trace/     each operand followed back to the tensor it reads (index algebra, score and value sides, masks)
    plan/      a traced site matched against the op's math and turned into the op call's arguments
    rewrite/   the op call emitted in place of the site
    report.py  one record per site, rewritten or skipped with the reason

decline.py holds Decline, the "not ours, because ..." that any stage raises; torch_compile_backend.py the
backend class that installs the pass into Inductor; inductor_guard.py keeps Inductor's own attention fusion
off the graphs we compile; programmatic_launch.py makes Inductor's kernels that launch as programmatic dependents
(the default under CUDA graphs) wait before they touch memory.

Inductor's caches: the pass's uuid() hashes its sources and options, so Inductor's FX-graph and AOTAutograd
caches serve a second process (or a recompile) without running the pass again; record_store.py keeps each
graph's site records beside those caches, so compile_report() lists the same sites on a cache hit.

Environment: GLACOMPILER_LOG=1 logs each site's record as it is made (report.py); GLACOMPILER_STRICT=1 makes
an unexpected error in the pass raise instead of compiling that graph without rewrites (graph_pass.py).
"""
from __future__ import annotations

from .report import SiteRecord, compile_report, format_report, reset_report

# The backend class module imports Inductor and dynamo (seconds of import, not needed to read a report) and
# registers "gla" with dynamo as it loads, so it is loaded on first access to one of these names (PEP 562).
# torch resolves the entry point `glacompiler.compiler:gla_backend` by attribute access, which lands here.
_BACKEND_CLASS_NAMES = ("BACKEND_NAME", "GlaBackend", "backend", "gla_backend", "register_gla_backend")


def __getattr__(name: str):
    if name in _BACKEND_CLASS_NAMES:
        from . import torch_compile_backend

        return getattr(torch_compile_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "BACKEND_NAME",
    "GlaBackend",
    "SiteRecord",
    "backend",
    "compile_report",
    "format_report",
    "gla_backend",
    "register_gla_backend",
    "reset_report",
]
