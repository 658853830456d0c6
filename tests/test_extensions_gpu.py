"""FlashAttention's extensions on a GPU at real sizes, bf16 and fp16 (`pytest -m gpu` on an H100/H200): the
portable kernels with softcap, ALiBi, sinks and windows; the Hopper latent kernel (sm_90) with sinks and windows,
each case first asserting that the op dispatches to it."""
import pytest
import torch

import glacompiler
from glacompiler.kernels import KernelCall, family_reasons
from glacompiler.kernels.latent_hopper import LatentHopperConfig
from glacompiler.op.validation import validate_inputs
from glacompiler.presets import PAPER_SPECS
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import AttentionSpec

from extension_cases import extension_arguments

pytestmark = pytest.mark.gpu

CAPACITY = 1000  # not a multiple of any key block or page
WINDOW = 300
PORTABLE_SPECS = {
    "gqa": PAPER_SPECS["gqa"],
    "gta": PAPER_SPECS["gta"],
    "mha": AttentionSpec.grouped(16, 16, 128),
    "gqa_odd": AttentionSpec.grouped(12, 4, 96, 80),
}
LATENT_SPECS = {"mla": PAPER_SPECS["mla"], "gla2": PAPER_SPECS["gla2"], "gla8": PAPER_SPECS["gla8"]}
ALL_FEATURES = "softcap+alibi+sinks+window"


def extension_problem(device, spec, features, *, query_len, page_size, dtype, seed, mask=None, mask_rows="key",
                      causal=True, seqlens=(0, 1, 517, CAPACITY)):
    generator = torch.Generator().manual_seed(seed)
    problem = make_decode_problem(spec, batch=4, query_len=query_len, capacity=CAPACITY, page_size=page_size,
                                  dtype=dtype, device=device, seqlens=list(seqlens), mask=mask,
                                  mask_rows=mask_rows, causal=causal, generator=generator)
    arguments = extension_arguments(features, spec, 4, generator, dtype, window=WINDOW)
    problem.kwargs.update({name: value.to(device) if isinstance(value, torch.Tensor) else value
                           for name, value in arguments.items()})
    return problem


def family_taking(problem) -> str:
    kw = problem.kwargs
    spec, shape = validate_inputs(kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"], kw["k_rope_cache"],
                                  kw["cache_seqlens"], kw["page_table"], kw["attn_mask"], None, None)
    call = KernelCall(kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"], kw["k_rope_cache"], kw["cache_seqlens"],
                      kw["page_table"], kw["attn_mask"], 1.0, True, None, kw.get("softcap", 0.0),
                      kw.get("alibi_slopes"), kw.get("sinks"), kw.get("window_size", (-1, -1)))
    reasons = family_reasons(spec, shape, call)
    return next(name for name, reason in reasons.items() if reason is None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("features", ["softcap", "alibi", "alibi_batch", "sinks", "window", "window_right",
                                      ALL_FEATURES])
@pytest.mark.parametrize("name, query_len, page_size", [("gqa", 1, 64), ("gta", 2, 0), ("mha", 4, 16),
                                                        ("gqa_odd", 3, 256)])
def test_portable_kernels(cuda_device, name, query_len, page_size, features, dtype):
    problem = extension_problem(cuda_device, PORTABLE_SPECS[name], features, query_len=query_len,
                                page_size=page_size, dtype=dtype, seed=len(name) + query_len + len(features),
                                causal=features != "window_right")
    assert family_taking(problem) == "portable"
    for num_splits in (None, 1, 5):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("features", ["softcap+alibi", "sinks+window", ALL_FEATURES])
@pytest.mark.parametrize("mask, mask_rows", [("bool", "key"), ("additive", "head"), ("bool", "token")])
def test_portable_kernels_with_masks(cuda_device, features, mask, mask_rows):
    problem = extension_problem(cuda_device, PORTABLE_SPECS["gqa"], features, query_len=3, page_size=64,
                                dtype=torch.bfloat16, seed=3, mask=mask, mask_rows=mask_rows)
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    check_fa_rule(out, lse, problem)


@pytest.fixture
def hopper(cuda_device):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Hopper latent kernel needs an sm_90 GPU")
    return cuda_device


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("features", ["sinks", "window", "window_right", "sinks+window"])
@pytest.mark.parametrize("name, query_len, page_size", [("mla", 1, 64), ("mla", 2, 16), ("gla2", 1, 0),
                                                        ("gla2", 3, 128), ("gla8", 1, 64)])
def test_hopper_latent_kernel(hopper, name, query_len, page_size, features, dtype):
    problem = extension_problem(hopper, LATENT_SPECS[name], features, query_len=query_len, page_size=page_size,
                                dtype=dtype, seed=len(name) + query_len, causal=features != "window_right")
    assert family_taking(problem) == "latent_hopper"
    for num_splits in (None, 1, 5):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("mask, mask_rows", [("bool", "key"), ("additive", "token")])
def test_hopper_latent_kernel_with_masks(hopper, mask, mask_rows):
    problem = extension_problem(hopper, LATENT_SPECS["gla2"], "sinks+window", query_len=2, page_size=64,
                                dtype=torch.bfloat16, seed=9, mask=mask, mask_rows=mask_rows)
    assert family_taking(problem) == "latent_hopper"
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, num_splits=3)
    check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("name, features, query_len, page_size", [
    ("mla", "sinks+window", 1, 64), ("mla", "window_right", 2, 16), ("mla", "sinks", 3, 0), ("gla2", "sinks+window", 2, 64)])
def test_hopper_latent_kernel_alternating(hopper, name, features, query_len, page_size):
    """The alternating schedule (each warpgroup scores every other block): the sink counted once, on split 0, and
    the window's first block in either warpgroup."""
    problem = extension_problem(hopper, LATENT_SPECS[name], features, query_len=query_len, page_size=page_size,
                                dtype=torch.bfloat16, seed=17 + query_len, causal=features != "window_right")
    for num_splits in (1, 4):
        out, lse = glacompiler.attention_with_kvcache_config(
            **problem.kwargs, config=LatentHopperConfig(num_splits, warp_specialized=True, alternating=True))
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("features, query_len", [("sinks+window", 1), ("window_right", 2)])
def test_hopper_latent_kernel_wide_key_blocks(hopper, features, query_len):
    """128-key blocks (two 64-key pages each): the window's first block and the sink on split 0."""
    problem = extension_problem(hopper, LATENT_SPECS["gla2"], features, query_len=query_len, page_size=64,
                                dtype=torch.bfloat16, seed=13, causal=features != "window_right")
    for num_splits in (1, 4):
        out, lse = glacompiler.attention_with_kvcache_config(
            **problem.kwargs, config=LatentHopperConfig(num_splits=num_splits, block_n=128))
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("features, query_len", [("sinks+window", 1), ("sinks", 2), ("window_right", 2)])
def test_hopper_latent_kernel_lazy_rescale(hopper, features, query_len, dtype):
    """The lazy rescale on both row-owned tiles: a sink's max is finite before the first block (split 0 only), the
    window's first block, and fp16's narrower range for P taken against a stale max."""
    problem = extension_problem(hopper, LATENT_SPECS["gla2"], features, query_len=query_len, page_size=64,
                                dtype=dtype, seed=19, causal=features != "window_right")
    for config in (LatentHopperConfig(4, True, 64, one_warpgroup=True, lazy_rescale=True),
                   LatentHopperConfig(1, True, 64, lazy_rescale=True)):
        out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("features, query_len", [("sinks+window", 2), ("sinks", 3), ("window_right", 2)])
def test_hopper_latent_kernel_ping_pong(hopper, features, query_len, dtype):
    """The ping-pong tile (two row groups taking turns): the sink counted once per row, on split 0, and the window's
    first block in both groups, with the lazy rescale and without, 64- and 128-key blocks."""
    problem = extension_problem(hopper, LATENT_SPECS["gla2"], features, query_len=query_len, page_size=64,
                                dtype=dtype, seed=23, causal=features != "window_right")
    for config in (LatentHopperConfig(4, True, 64, warp_specialized=True),
                   LatentHopperConfig(1, True, 128, warp_specialized=True),
                   LatentHopperConfig(3, True, 64, warp_specialized=True, lazy_rescale=True)):
        out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("name, query_len", [("gqa", 2), ("mla", 2), ("gla2", 1)])  # gla2: 128-key blocks
def test_window_skips_key_blocks_before_it(cuda_device, name, query_len):
    """Full caches: whole key blocks before the first query's window (a multiple of 128 keys: whole blocks of
    64 or 128) hold NaN and are never read; the result is that of the same problem without NaN."""
    spec = {**PORTABLE_SPECS, **LATENT_SPECS}[name]

    def full_problem():
        # Full lengths from the start: make_decode_problem poisons the slots past each length with NaN.
        return extension_problem(cuda_device, spec, "window", query_len=query_len, page_size=0,
                                 dtype=torch.bfloat16, seed=1, seqlens=[CAPACITY] * 4)

    clean, poisoned = full_problem(), full_problem()
    stale = (CAPACITY - query_len - WINDOW) // 128 * 128
    for name_ in ("k_cache", "v_cache", "k_rope_cache"):
        if poisoned.kwargs[name_] is not None:
            poisoned.kwargs[name_][:, :stale] = float("nan")
    out, lse = glacompiler.attention_with_kvcache(**poisoned.kwargs, return_lse=True, num_splits=3)
    check_fa_rule(out, lse, clean)


@pytest.mark.parametrize("name", ["gqa", "gla2"])
def test_cuda_graph_capture_and_replay(cuda_device, name):
    """The extensions launch without a host sync: captured once, replayed on new queries."""
    spec = {**PORTABLE_SPECS, **LATENT_SPECS}[name]
    features = ALL_FEATURES if name == "gqa" else "sinks+window"
    problem = extension_problem(cuda_device, spec, features, query_len=1, page_size=64, dtype=torch.bfloat16,
                                seed=2)
    glacompiler.attention_with_kvcache(**problem.kwargs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    problem.kwargs["q"].copy_(torch.randn_like(problem.kwargs["q"]))
    graph.replay()
    torch.cuda.synchronize()
    check_fa_rule(out, lse, problem)
