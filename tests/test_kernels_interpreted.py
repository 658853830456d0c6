"""The generated Triton kernels under the interpreter (CPU), against a float64 reference with
FlashAttention's error rule. bf16 is tested on the GPU only: under the interpreter tl.dot on bf16
operands is wrong (a known interpreter defect, seen with triton 3.6 and 3.9)."""
import dataclasses
import itertools
import zlib

import pytest
import torch

import glacompiler
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import AttentionSpec

from kernel_cases import CPU_SPECS

CAPACITY = 70  # not a multiple of any key block


def run_and_check(problem, **kwargs):
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, **kwargs)
    return check_fa_rule(out, lse, problem)


@pytest.mark.parametrize(
    "name, query_len, page_size",
    list(itertools.product(CPU_SPECS, (1, 2, 3, 8), (0, 1, 16, 64))),
)
def test_family_matrix_float32(interpret_kernels, name, query_len, page_size):
    # A fixed seed per case: hash() of a str changes between processes, so CI would draw new data each run.
    seed = zlib.crc32(f"{name}-{query_len}-{page_size}".encode())
    problem = make_decode_problem(
        CPU_SPECS[name], batch=4, query_len=query_len, capacity=CAPACITY, page_size=page_size,
        seqlens=[0, 1, 37, CAPACITY], generator=torch.Generator().manual_seed(seed),
    )
    # Splits 1 (direct write) and 3 (LSE combine, one split empty for the short sequences).
    run_and_check(problem, num_splits=1)
    run_and_check(problem, num_splits=3)


@pytest.mark.parametrize("name", list(CPU_SPECS))
def test_family_float16_heuristic_config(interpret_kernels, name):
    problem = make_decode_problem(
        CPU_SPECS[name], batch=3, query_len=2, capacity=CAPACITY, page_size=16, dtype=torch.float16,
        generator=torch.Generator().manual_seed(7),
    )
    run_and_check(problem)


@pytest.mark.parametrize("query_len, page_size", [(1, 0), (4, 64), (2, 16)])
def test_latents_of_256_in_the_heuristic_key_blocks(interpret_kernels, query_len, page_size):
    """The heuristic's 64-key blocks for latents of 256 (8 and 32 packed rows, contiguous and in pages of 64) and its
    32-key blocks in pages of 16, fp16, split and not."""
    from glacompiler.kernels.portable.config import heuristic_config

    spec = AttentionSpec.latent(16, 2, 256, 64)
    problem = make_decode_problem(spec.with_storage(paged=page_size > 0), batch=2, query_len=query_len,
                                  capacity=CAPACITY, page_size=page_size, dtype=torch.float16,
                                  generator=torch.Generator().manual_seed(13))
    config = heuristic_config(problem.spec, 2, CAPACITY, query_len, 132, page_size)
    assert config.block_n == (32 if page_size == 16 else 64)
    for splits in (1, 2):
        out, lse = glacompiler.attention_with_kvcache_config(
            **problem.kwargs, config=dataclasses.replace(config, num_splits=splits))
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("mask_rows", ["key", "token", "head"])
@pytest.mark.parametrize("mask", ["bool", "additive"])
@pytest.mark.parametrize("name", ["gqa", "gta", "gla2"])
def test_attention_mask(interpret_kernels, name, mask, mask_rows):
    """Masks that vary per key only (one key vector for every row: the kernel's vector path), per draft token
    and per head (a tile per row block), with causality on top."""
    problem = make_decode_problem(
        CPU_SPECS[name], batch=3, query_len=3, capacity=CAPACITY, page_size=16, mask=mask, mask_rows=mask_rows,
        causal=mask_rows == "key", generator=torch.Generator().manual_seed(11),
    )
    run_and_check(problem, num_splits=2)


@pytest.mark.parametrize("mask_rows", ["key", "head"])
@pytest.mark.parametrize("block_n", [16, 32])
def test_masks_over_pages_that_hold_whole_key_blocks(interpret_kernels, block_n, mask_rows):
    """Pages of 64 keys hold whole blocks: the kernel reads one page id per block, and the mask's first key
    (never the first slot here) is rounded down to a block start, the keys before it ruled out by the mask."""
    from glacompiler.kernels.portable import PortableConfig

    problem = make_decode_problem(CPU_SPECS["gqa"], batch=3, query_len=2, capacity=CAPACITY, page_size=64,
                                  mask="bool", mask_rows=mask_rows, generator=torch.Generator().manual_seed(5))
    problem.kwargs["attn_mask"][..., : 3 * block_n // 2] = False  # the first attended key sits inside a block
    for splits in (1, 3):
        config = PortableConfig(block_m=16, block_n=block_n, block_d=64, num_splits=splits)
        out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("name", ["gta", "gqa"])
def test_max_splits_over_one_block_each(interpret_kernels, name):
    """MAX_SPLITS splits of one key block each: all of them hold keys of the long sequence (its last one partly),
    and those past the shorter sequence's end are empty."""
    from glacompiler.kernels.common.splits import MAX_SPLITS
    from glacompiler.kernels.portable import PortableConfig

    problem = make_decode_problem(CPU_SPECS[name], batch=2, query_len=2, capacity=MAX_SPLITS * 16,
                                  page_size=16, seqlens=[MAX_SPLITS * 16 - 5, 700],
                                  generator=torch.Generator().manual_seed(11))
    config = PortableConfig(block_m=16, block_n=16, block_d=64, num_splits=MAX_SPLITS)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    check_fa_rule(out, lse, problem)


def test_mask_that_rules_out_everything_gives_zero_and_minus_inf(interpret_kernels):
    problem = make_decode_problem(CPU_SPECS["gla2"], batch=2, query_len=1, capacity=40, causal=False)
    problem.kwargs["attn_mask"] = torch.zeros(2, 1, 1, 40, dtype=torch.bool)
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, num_splits=2)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()


@pytest.mark.parametrize("name, dtype", [("gqa", torch.float32), ("gqa", torch.float16), ("gta", torch.float32)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_a_row_of_lowest_fills_only_reads_every_key(interpret_kernels, name, dtype, num_splits):
    """transformers fills masked keys with torch.finfo(dtype).min. A row of such fills only is attended whole, as
    eager attention does: in float32 the fill swamps every score (a softmax of equal scores: the mean of the values),
    in float16 (-65504) the scores still tell keys apart. In float32 that fill times log2(e) overflowed to -inf and
    the row came out empty. Sequence 0 is all fills, sequence 1 half fills, sequence 2 has fills in its second half
    only: every output against float64; lse where the row saw a real key."""
    fill = torch.finfo(dtype).min
    problem = make_decode_problem(CPU_SPECS[name], batch=3, query_len=1, capacity=40, causal=False, poison=False,
                                  seqlens=[40] * 3, dtype=dtype, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(3, 1, 1, 40, dtype=dtype)
    mask[0] = fill
    mask[1, ..., ::2] = fill
    mask[2, ..., 20:] = fill
    problem.kwargs["attn_mask"] = mask
    expected_out, expected_lse = problem.reference(torch.float64)
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, num_splits=num_splits)
    if dtype == torch.float32:
        values = problem.kwargs["k_cache" if name == "gta" else "v_cache"][0].double()
        mean_value = values[..., :out.shape[-1]].mean(dim=0)  # [Hkv, Dv]: every key alike
        group = out.shape[2] // mean_value.shape[0]
        assert torch.allclose(expected_out[0, 0], mean_value.repeat_interleave(group, dim=0), atol=1e-6)
    assert torch.allclose(out.double(), expected_out, atol=2e-3 if dtype == torch.float16 else 1e-5)
    assert torch.allclose(lse[1:].double(), expected_lse[1:], atol=2e-3 if dtype == torch.float16 else 1e-5)
    assert (lse[0] < -1e4).all()  # the fills' own scale: no real key was seen


@pytest.mark.parametrize("query_len, mask_tokens", [(1, 1), (3, 1), (3, 3)])
def test_mask_skips_ruled_out_key_blocks(interpret_kernels, query_len, mask_tokens):
    """Keys the mask rules out are never read: poison them with NaN and the result stays finite and right.
    One mask row for every query row (the vector path) and one per draft token (the tile path)."""
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=2, query_len=query_len, capacity=128, causal=False,
                                  poison=False)
    mask = torch.zeros(2, 1, mask_tokens, 128, dtype=torch.bool)
    mask[..., 16:40] = True  # a mostly empty static cache
    mask[..., 24:30] = False  # a hole no row attends to, inside the visited range
    mask[:, :, -1, 38:40] = False  # with a row per token, keys only earlier tokens see
    problem.kwargs["attn_mask"] = mask
    expected = problem.reference(torch.float64)
    for cache in (problem.kwargs["k_cache"], problem.kwargs["v_cache"]):
        cache[:, :16] = float("nan")
        cache[:, 24:30] = float("nan")
        cache[:, 40:] = float("nan")
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, num_splits=2)
    assert torch.allclose(out.double(), expected[0], atol=1e-5)
    assert torch.allclose(lse.double(), expected[1], atol=1e-5)


DENSE_RUNS = [(13, 57), (0, 128), (70, 71)]  # one run of keys per sequence, starting off block boundaries


def _dense_mask(form: str, query_len: int, runs=DENSE_RUNS, capacity: int = 128) -> torch.Tensor:
    dtype, rows = form.split()
    allowed = torch.zeros(len(runs), 1, 1, capacity, dtype=torch.bool)
    for b, (lo, hi) in enumerate(runs):
        allowed[b, ..., lo:hi] = True
    if rows == "head":
        allowed = allowed.expand(len(runs), CPU_SPECS["gqa"].num_q_heads, query_len, capacity).contiguous()
    if dtype == "bool":
        return allowed
    # "lowest": transformers' masked value, torch.finfo(dtype).min, excluded from the range like -inf
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min if dtype == "lowest" else float("-inf"))


def _poison_outside(problem, runs, page_size: int) -> None:
    """NaN in every cache slot outside each sequence's run (through the page table for a paged cache)."""
    kw = problem.kwargs
    for b, (lo, hi) in enumerate(runs):
        outside = torch.cat([torch.arange(0, lo), torch.arange(hi, 128)])
        for cache in (kw["k_cache"], kw["v_cache"]):
            if page_size:
                cache[kw["page_table"][b, outside // page_size].long(), outside % page_size] = float("nan")
            else:
                cache[b, outside] = float("nan")


@pytest.mark.parametrize("query_len, mask_form, setting", [
    (1, "bool key", "full lengths"), (3, "bool key", "full lengths"), (1, "bool head", "full lengths"),
    (1, "additive key", "full lengths"), (3, "additive head", "full lengths"), (3, "bool key", "causal"),
    (1, "bool key", "shorter lengths"), (1, "additive key", "no lengths"), (2, "bool key", "paged"),
    (1, "bool head", "paged, no lengths"), (1, "lowest key", "no lengths"), (3, "lowest head", "full lengths"),
])
def test_dense_mask_is_not_read_and_its_range_holds(interpret_kernels, query_len, mask_form, setting):
    """A mask that allows every key of its range (mask_key_range's dense flag) is not read by the kernel: the
    range alone must then keep out the keys before it, in the first key block too, with causality, lengths
    shorter than the run, or no lengths. Every slot outside the runs holds NaN."""
    page_size = 16 if setting.startswith("paged") else 0
    seqlens = [40, 100, 128] if setting == "shorter lengths" else [128] * 3
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=3, query_len=query_len, capacity=128, page_size=page_size,
                                  causal=setting == "causal", poison=False, seqlens=seqlens)
    mask = _dense_mask(mask_form, query_len)
    problem.kwargs["attn_mask"] = mask
    if "no lengths" in setting:
        problem.kwargs["cache_seqlens"] = None
    assert torch.ops.glacompiler.mask_key_range(mask, 3, 128)[2].tolist() == [1, 1, 1]  # the dense path runs
    expected = problem.reference(torch.float64)
    _poison_outside(problem, DENSE_RUNS, page_size)
    for num_splits in (1, 3):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, num_splits=num_splits)
        assert torch.allclose(out.double(), expected[0], atol=1e-5)
        assert torch.allclose(lse.double(), expected[1], atol=1e-5)


def test_a_dense_flag_means_the_mask_is_not_read(interpret_kernels):
    """kv_range is trusted (the backend computes it from the same mask): with its dense flag set, the kernel takes
    the range for the mask and never loads the mask, so a hole the flag does not admit to is attended."""
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=3, query_len=1, capacity=128, causal=False,
                                  poison=False, seqlens=[128] * 3)
    dense = _dense_mask("bool key", 1)
    holed = dense.clone()
    holed[0, ..., 20:30] = False
    kw = problem.kwargs
    kw.update(attn_mask=dense, softmax_scale=0.2)
    expected = problem.reference(torch.float64)
    op = torch.ops.glacompiler.attention_with_kvcache.default
    key_range = torch.ops.glacompiler.mask_key_range(dense, 3, 128)
    out, lse = op(kw["q"], kw["k_cache"], kw["v_cache"], None, None, None, None, holed, 0.2, False, 1, key_range)
    problem.kwargs["attn_mask"] = holed  # (the op's own range of the holed mask says it is not dense: it is read)
    kernel_out = op(kw["q"], kw["k_cache"], kw["v_cache"], None, None, None, None, holed, 0.2, False, 1)[0]
    holed_expected = problem.reference(torch.float64)
    assert torch.allclose(out.double(), expected[0], atol=1e-5)
    assert torch.allclose(kernel_out.double(), holed_expected[0], atol=1e-5)
    assert not torch.allclose(expected[0][0], holed_expected[0][0], atol=1e-3)


@pytest.mark.parametrize("name", ["gqa", "gta"])
def test_dense_and_holed_sequences_in_one_call(interpret_kernels, name):
    """A masked call is two launches, a dense pass (sequences whose mask is dense in its range: not read) and a
    sparse pass (the others: read); each sequence is taken by one of them. Sequences 0 and 2 are dense runs,
    sequence 1 has a hole; the slots outside the runs and in the hole hold NaN, so a dense pass reading the hole
    into its result shows, and so does a dense pass writing sequence 1 (run last, with the launches swapped).
    test_a_pass_reads_no_key_of_the_other_passs_sequences checks the reads."""
    from glacompiler.op import prepared

    runs, hole = [(13, 57), (0, 128), (70, 100)], (30, 45)
    mask = _dense_mask("bool key", 1, runs)
    mask[1, ..., hole[0]:hole[1]] = False
    problem = make_decode_problem(CPU_SPECS[name], batch=3, query_len=1, capacity=128, causal=False, poison=False,
                                  seqlens=[128] * 3)
    kw = problem.kwargs
    kw["attn_mask"] = mask
    assert torch.ops.glacompiler.mask_key_range(mask, 3, 128)[2].tolist() == [1, 0, 1]
    expected = problem.reference(torch.float64)
    caches = [cache for cache in (kw["k_cache"], kw["v_cache"], kw["k_rope_cache"]) if cache is not None]
    for b in range(len(runs)):
        unseen = ~mask[b, 0, 0]
        for cache in caches:
            cache[b, unseen] = float("nan")
    prepared.clear_prepared_calls()
    for swapped in (False, True):
        for num_splits in (1, 3):
            out, lse = glacompiler.attention_with_kvcache(**kw, return_lse=True, num_splits=num_splits)
            assert torch.allclose(out.double(), expected[0], atol=1e-5), (swapped, num_splits)
            assert torch.allclose(lse.double(), expected[1], atol=1e-5), (swapped, num_splits)
        plans = [call.plan for call in prepared._prepared.values()]
        assert [len(plan.launches) for plan in plans] == [2, 2]  # (one plan per split count)
        for plan in plans:
            plan.launches = plan.launches[::-1]
    prepared.clear_prepared_calls()


@pytest.mark.parametrize("pass_run, holes", [("dense", True), ("sparse", False)])
def test_a_pass_reads_no_key_of_the_other_passs_sequences(interpret_kernels, monkeypatch, pass_run, holes):
    """Only one pass runs, on a batch whose sequences all belong to the other: no lane of any load may fall in the
    key cache. The interpreter's masked loads are counted by address."""
    import numpy as np
    from triton.runtime import interpreter

    from glacompiler.op import prepared

    runs = [(13, 57), (0, 128)]
    mask = _dense_mask("bool key", 1, runs)
    if holes:
        mask[:, ..., 20] = False
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=2, query_len=1, capacity=128, causal=False, poison=False,
                                  seqlens=[128] * 2)
    kw = problem.kwargs
    kw["attn_mask"] = mask
    assert torch.ops.glacompiler.mask_key_range(mask, 2, 128)[2].tolist() == ([0, 0] if holes else [1, 1])
    keys = kw["k_cache"]
    low, high = keys.data_ptr(), keys.data_ptr() + keys.numel() * keys.element_size()
    lanes = []
    real_load = interpreter.InterpreterBuilder.create_masked_load

    def counting_load(self, ptrs, load_mask, *rest):
        inside = (ptrs.data >= low) & (ptrs.data < high) & np.asarray(load_mask.data, dtype=bool)
        lanes.append(int(np.count_nonzero(inside)))
        return real_load(self, ptrs, load_mask, *rest)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", counting_load)
    prepared.clear_prepared_calls()
    glacompiler.attention_with_kvcache(**kw, num_splits=2)  # both passes: the keys are read (by the counted loads)
    assert sum(lanes) > 0
    (call,) = prepared._prepared.values()
    call.plan.launches = call.plan.launches[:1] if pass_run == "dense" else call.plan.launches[1:]
    lanes.clear()
    glacompiler.attention_with_kvcache(**kw, num_splits=2)
    prepared.clear_prepared_calls()
    assert lanes and sum(lanes) == 0


@pytest.mark.parametrize("head_dim_q, head_dim_v", [(576, 512), (8, 8), (200, 136)])
def test_head_dim_extremes(interpret_kernels, head_dim_q, head_dim_v):
    from glacompiler.spec import AttentionSpec

    spec = AttentionSpec.grouped(4, 2, head_dim_q, head_dim_v)
    problem = make_decode_problem(spec, batch=2, query_len=2, capacity=33, page_size=8)
    run_and_check(problem, num_splits=2)


def test_explicit_configs_agree(interpret_kernels):
    """Every tile shape the tuner may pick computes the same function."""
    from glacompiler.kernels.portable import PortableConfig

    problem = make_decode_problem(CPU_SPECS["gta"], batch=2, query_len=3, capacity=CAPACITY, page_size=16)
    for block_m, block_n, block_d, splits, preload in [(16, 16, 16, 1, True), (32, 64, 32, 4, False), (64, 32, 64, 2, True)]:
        config = PortableConfig(block_m=block_m, block_n=block_n, block_d=block_d, num_splits=splits, preload_q=preload)
        out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("dv_split", [2, 4])
@pytest.mark.parametrize("name", ["gqa", "gta", "mla"])
def test_output_dims_split_over_programs(interpret_kernels, name, dv_split):
    from glacompiler.kernels.portable import PortableConfig

    problem = make_decode_problem(CPU_SPECS[name], batch=2, query_len=2, capacity=CAPACITY, page_size=16)
    config = PortableConfig(block_m=16, block_n=16, block_d=32, num_splits=2, dv_split=dv_split)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    check_fa_rule(out, lse, problem)
