"""The op's CPU implementation (glacompiler/op/cpu_attention.py: PyTorch's fused CPU attention kernel) against the
float64 reference with FlashAttention's error rule: every head layout, paged and contiguous, masks, the extensions,
empty rows, and caches whose stale slots hold NaN or infinities."""
import zlib

import pytest
import torch

import glacompiler
from glacompiler.op import cpu_attention as cpu_attention_module
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.reference import attention_with_kvcache_reference

from extension_cases import extension_arguments
from kernel_cases import CPU_SPECS

CAPACITY = 70
SEQLENS = (0, 1, 37, CAPACITY)


def problem_for(name, *, query_len=1, page_size=0, dtype=torch.float32, mask=None, mask_rows="key", causal=True,
                features="", seqlens=SEQLENS, poison=True):
    seed = zlib.crc32(f"{name}-{query_len}-{page_size}-{dtype}-{mask}-{mask_rows}-{features}".encode())
    generator = torch.Generator().manual_seed(seed)
    spec = CPU_SPECS[name]
    problem = make_decode_problem(spec, batch=len(seqlens), query_len=query_len, capacity=CAPACITY,
                                  page_size=page_size, dtype=dtype, seqlens=seqlens, mask=mask, mask_rows=mask_rows,
                                  causal=causal, poison=poison, generator=generator)
    if features:
        problem.kwargs.update(extension_arguments(features, spec, len(seqlens), generator, dtype))
    return problem


def run_op(problem):
    return glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)


@pytest.mark.parametrize("page_size", [0, 16])
@pytest.mark.parametrize("query_len", [1, 3])
@pytest.mark.parametrize("name", list(CPU_SPECS))
def test_every_layout_float32(name, query_len, page_size):
    problem = problem_for(name, query_len=query_len, page_size=page_size)
    check_fa_rule(*run_op(problem), problem)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["gqa", "gta", "mla", "gla2"])
def test_half_precisions(name, dtype):
    problem = problem_for(name, query_len=2, page_size=16, dtype=dtype)
    out, lse = run_op(problem)
    assert out.dtype == dtype and lse.dtype == torch.float32
    check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("with_lengths", [True, False])
@pytest.mark.parametrize("mask_rows", ["key", "token", "head"])
@pytest.mark.parametrize("mask", ["bool", "additive"])
@pytest.mark.parametrize("name", ["gqa", "gta", "gla2"])
def test_masks(name, mask, mask_rows, with_lengths):
    """Masks per key, per draft token and per head, with causality on top where they vary per key only, with the
    lengths given (paged, NaN past them) or the mask alone (contiguous and clean: the problem's masks reach past its
    lengths, where its page tables hold junk)."""
    problem = problem_for(name, query_len=3, page_size=16 if with_lengths else 0, mask=mask, mask_rows=mask_rows,
                          causal=mask_rows == "key", poison=with_lengths)
    if not with_lengths:
        problem.kwargs["cache_seqlens"] = None
    check_fa_rule(*run_op(problem), problem)


@pytest.mark.parametrize("features, causal, query_len", [
    ("softcap", True, 1), ("alibi", True, 3), ("alibi_batch", False, 2), ("sinks", True, 2), ("window", True, 3),
    ("window_right", False, 3), ("alibi+sinks+window", True, 2), ("softcap+alibi+sinks+window", True, 2),
])
@pytest.mark.parametrize("name", ["gqa", "gta"])
def test_extensions(name, features, causal, query_len):
    problem = problem_for(name, query_len=query_len, causal=causal, features=features, page_size=16)
    out, lse = run_op(problem)
    check_fa_rule(out, lse, problem)
    if "sinks" in features:  # the empty sequence's rows see only their sink: out 0, lse the sink
        sinks = problem.kwargs["sinks"].float()
        assert not out[0].any() and torch.equal(lse[0], sinks.expand(query_len, -1))


def test_latent_sinks_and_window():
    """A latent layout takes sinks and a window (not a soft cap or ALiBi: validation refuses those)."""
    problem = problem_for("gla2", query_len=3, features="sinks+window", page_size=16)
    check_fa_rule(*run_op(problem), problem)


def test_rows_that_see_nothing_give_zero_and_minus_inf():
    problem = problem_for("gla2", query_len=3, seqlens=(0, 1, 2))
    out, lse = run_op(problem)
    assert not out[0].any() and torch.isneginf(lse[0]).all()
    assert not out[1, :2].any() and torch.isneginf(lse[1, :2]).all() and torch.isfinite(lse[1, 2]).all()
    check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("stale", [float("nan"), float("inf"), float("-inf"), 3e38])
@pytest.mark.parametrize("page_size", [0, 16])
@pytest.mark.parametrize("name", ["gqa", "gta", "mla"])
def test_stale_slots_never_reach_the_output(name, page_size, stale):
    """Slots past each length (and, paged, the pages no sequence owns) hold a value that turns a score or a zero
    probability's product into NaN; the result equals the clean cache's. A huge finite value overflows scores."""
    clean = problem_for(name, query_len=2, page_size=page_size, poison=False)
    expected = run_op(clean)
    poisoned = problem_for(name, query_len=2, page_size=page_size, poison=True)
    for key in ("k_cache", "v_cache", "k_rope_cache"):
        cache = poisoned.kwargs.get(key)
        if cache is not None:
            cache.nan_to_num_(nan=stale, posinf=stale, neginf=stale)
            assert (cache == stale).any() if stale == stale else cache.isnan().any()
    out, lse = run_op(poisoned)
    torch.testing.assert_close(out, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(lse, expected[1], rtol=0, atol=0)


def test_clean_caches_are_not_copied(monkeypatch):
    """The zeroed copies of the caches are made only when NaN came out: never for a clean cache."""
    copies = []
    real_where = torch.where

    def counting_where(condition, *args):
        if args and args[0].dim() == 4 and args[0].shape[1] == CAPACITY:
            copies.append(args[0].shape)
        return real_where(condition, *args)

    problem = problem_for("gqa", query_len=2, poison=False)
    monkeypatch.setattr(cpu_attention_module.torch, "where", counting_where)
    run_op(problem)
    assert copies == []
    poisoned = problem_for("gqa", query_len=2, poison=True)
    run_op(poisoned)
    assert len(copies) == 2  # keys and values, once


def test_nan_inside_the_lengths_stays_nan():
    """A NaN the caller wrote inside a sequence's length is not hidden (as in the reference)."""
    problem = problem_for("gqa", query_len=1, poison=False)
    problem.kwargs["v_cache"][2, 5, 0, 0] = float("nan")
    out, _ = run_op(problem)
    expected, _ = attention_with_kvcache_reference(problem.kwargs["q"], problem.kwargs["k_cache"],
                                                   problem.kwargs["v_cache"],
                                                   cache_seqlens=problem.kwargs["cache_seqlens"])
    assert torch.equal(out.isnan(), expected.isnan()) and out[2].isnan().any() and not out[3].isnan().any()
