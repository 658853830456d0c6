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
@pytest.mark.parametrize("query_len", [1, 3, 16])
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
    check_stale_slots(name, page_size, stale, torch.float32)


@pytest.mark.parametrize("dtype, features, mask", [
    (torch.bfloat16, "", None), (torch.float16, "alibi+window", None), (torch.bfloat16, "sinks", "additive"),
    (torch.float32, "alibi_batch+window_right", "bool"),
])
def test_stale_slots_in_half_precision_and_with_biases(dtype, features, mask):
    """The same in bf16 and fp16 (3e38 is inf in fp16), beside ALiBi, windows, sinks and the caller's masks."""
    for stale in (float("nan"), float("inf"), 3e38):
        check_stale_slots("gqa", 16, stale, dtype, features=features, mask=mask)


def check_stale_slots(name, page_size, stale, dtype, **options):
    clean = problem_for(name, query_len=2, page_size=page_size, dtype=dtype, poison=False, **options)
    expected = run_op(clean)
    poisoned = problem_for(name, query_len=2, page_size=page_size, dtype=dtype, poison=True, **options)
    for key in ("k_cache", "v_cache", "k_rope_cache"):
        cache = poisoned.kwargs.get(key)
        if cache is not None:
            assert cache.isnan().any()
            cache.nan_to_num_(nan=stale, posinf=stale, neginf=stale)
    out, lse = run_op(poisoned)
    torch.testing.assert_close(out, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(lse, expected[1], rtol=0, atol=0)


def test_clean_caches_run_the_kernel_once(monkeypatch):
    """The kernel runs again on caches with stale slots zeroed only when NaN came out: never for a clean cache."""
    calls = []
    kernel = cpu_attention_module._FUSED_CPU_ATTENTION

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(cpu_attention_module, "_FUSED_CPU_ATTENTION", counted)
    run_op(problem_for("gqa", query_len=2, poison=False))
    assert len(calls) == 1
    calls.clear()
    run_op(problem_for("gqa", query_len=2, poison=True))
    assert len(calls) == 2


def test_float32_is_computed_in_float64(monkeypatch):
    """A draw (test_op.py's MLA, Lq 8, pages of 16) on which PyTorch's float32 kernel misses FlashAttention's rule
    (2.4x the float32 reference's error): the op computes float32 in float64 and meets it."""
    problem = make_decode_problem(CPU_SPECS["mla"], batch=4, query_len=8, capacity=45, page_size=16,
                                  seqlens=[0, 1, 20, 45])
    check_fa_rule(*run_op(problem), problem)
    kernel = cpu_attention_module._FUSED_CPU_ATTENTION

    def in_float32(queries, keys, values, *args, attn_mask, scale):
        out, lse = kernel(queries.float(), keys.float(), values.float(), *args, attn_mask=attn_mask.float(),
                          scale=scale)
        return out.double(), lse.double()

    monkeypatch.setattr(cpu_attention_module, "_FUSED_CPU_ATTENTION", in_float32)
    with pytest.raises(AssertionError, match="output error too large"):
        check_fa_rule(*run_op(problem), problem)


def test_a_cache_without_slots():
    """Zero keys (a contiguous cache of capacity 0, a page table of 0 columns): out 0, lse -inf or the sinks."""
    q = torch.randn(2, 3, 4, 16)
    sinks = torch.randn(4)
    for k_cache, page_table in ((torch.randn(2, 0, 2, 16), None),
                                (torch.randn(3, 8, 2, 16), torch.zeros(2, 0, dtype=torch.int32))):
        for with_sinks in (False, True):
            out, lse = glacompiler.attention_with_kvcache(q, k_cache, k_cache, page_table=page_table,
                                                          sinks=sinks if with_sinks else None, return_lse=True)
            expected_lse = sinks.expand(2, 3, 4) if with_sinks else torch.full((2, 3, 4), float("-inf"))
            assert not out.any() and out.shape == (2, 3, 4, 16) and torch.equal(lse, expected_lse)
            # the reference agrees (the tests' oracle must not fail where the op has an answer)
            reference_out, reference_lse = attention_with_kvcache_reference(
                q, k_cache, k_cache, page_table=page_table, sinks=sinks if with_sinks else None)
            assert torch.equal(reference_out, out) and torch.equal(reference_lse, expected_lse)


def test_the_reference_takes_a_batch_of_no_sequences():
    out, lse = attention_with_kvcache_reference(torch.randn(0, 3, 4, 16), torch.randn(0, 8, 2, 16),
                                                torch.randn(0, 8, 2, 24))
    assert out.shape == (0, 3, 4, 24) and lse.shape == (0, 3, 4)


def test_sinks_of_minus_infinity_beside_rows_that_see_nothing():
    problem = problem_for("gqa", query_len=3, seqlens=(0, 1, 37, CAPACITY), features="sinks")
    problem.kwargs["sinks"][:3] = float("-inf")
    out, lse = run_op(problem)
    check_fa_rule(out, lse, problem)
    assert not out[0].any() and torch.isneginf(lse[0, :, :3]).all()


def test_bad_keys_inside_the_lengths_that_no_row_sees():
    """NaN and infinite keys inside a length but hidden from every row by the window or the mask, and a finite bf16
    key whose score overflows there: the reference drops those scores, and so does the op."""
    problem = problem_for("gqa", query_len=1, features="window", poison=False)  # window 21: sequence 3 sees 48-69
    problem.kwargs["k_cache"][3, 5] = float("nan")
    problem.kwargs["k_cache"][3, 6] = float("inf")
    check_fa_rule(*run_op(problem), problem)
    problem = problem_for("gla2", query_len=2, mask="bool", dtype=torch.bfloat16, poison=False)
    problem.kwargs["attn_mask"][2, ..., 9] = False
    problem.kwargs["k_cache"][2, 9] = 3e38  # (finite in bf16; its scores overflow float32)
    problem.kwargs["k_rope_cache"][2, 9] = 3e38
    check_fa_rule(*run_op(problem), problem)


def test_a_mask_alone_on_a_paged_cache():
    """No lengths: pages are read up to the mask's last allowed key, past which the page table holds ids out of the
    cache's range and the slots NaN."""
    problem = problem_for("gta", query_len=2, page_size=16, mask="bool", poison=True)
    lengths = problem.kwargs.pop("cache_seqlens")
    problem.kwargs["cache_seqlens"] = None
    capacity = problem.kwargs["attn_mask"].shape[-1]  # (pages of 16: 80 slots)
    problem.kwargs["attn_mask"] &= torch.arange(capacity) < lengths[:, None, None, None]
    assert int(problem.kwargs["page_table"].max()) >= problem.kwargs["k_cache"].shape[0]  # junk past the lengths
    check_fa_rule(*run_op(problem), problem)


@pytest.mark.parametrize("shape", [(1, 1, 1, CAPACITY), (1, 3, CAPACITY), (CAPACITY,), (4, 8, 3, 1), (4, 1, 3, 1)])
def test_mask_shapes_that_broadcast(shape):
    """Masks with a batch of 1, fewer than four dimensions, or one column for every key."""
    problem = problem_for("gqa", query_len=3)  # (contiguous: the mask's keys are the capacity's 70)
    generator = torch.Generator().manual_seed(len(shape))
    problem.kwargs["attn_mask"] = torch.randn(shape, generator=generator)
    check_fa_rule(*run_op(problem), problem)


def test_nan_inside_the_lengths_stays_nan():
    """A NaN the caller wrote inside a sequence's length is not hidden (as in the reference)."""
    problem = problem_for("gqa", query_len=1, poison=False)
    problem.kwargs["v_cache"][2, 5, 0, 0] = float("nan")
    out, _ = run_op(problem)
    expected, _ = attention_with_kvcache_reference(problem.kwargs["q"], problem.kwargs["k_cache"],
                                                   problem.kwargs["v_cache"],
                                                   cache_seqlens=problem.kwargs["cache_seqlens"])
    assert torch.equal(out.isnan(), expected.isnan()) and out[2].isnan().any() and not out[3].isnan().any()
