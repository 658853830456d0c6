"""The op's contract on CPU: PyTorch path against float64, argument errors, torch.library registration."""
import itertools

import pytest
import torch

import glacompiler
from glacompiler.kernels.common.splits import MAX_SPLITS
from glacompiler.problems import check_fa_rule, make_decode_problem

from kernel_cases import CPU_SPECS


@pytest.mark.parametrize("name, query_len, page_size", list(itertools.product(CPU_SPECS, (1, 3, 8), (0, 1, 16))))
def test_cpu_path_matches_float64(name, query_len, page_size):
    problem = make_decode_problem(CPU_SPECS[name], batch=4, query_len=query_len, capacity=45, page_size=page_size,
                                  seqlens=[0, 1, 20, 45])
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("mask", ["bool", "additive"])
def test_cpu_path_masks(mask):
    problem = make_decode_problem(CPU_SPECS["gta"], batch=3, query_len=2, capacity=40, mask=mask, causal=False)
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    check_fa_rule(out, lse, problem)


def test_reference_ignores_slots_past_a_mask_it_did_not_gather():
    """With a paged cache, a mask and no lengths, the reference gathers pages up to the mask's last key and reads
    page 0 for the rest: NaN there must not reach the output (the probabilities there are 0)."""
    from glacompiler.reference import attention_with_kvcache_reference

    generator = torch.Generator().manual_seed(5)
    q = torch.randn(2, 1, 8, 32, generator=generator)
    k_cache, v_cache = torch.randn(2, 8, 16, 2, 32, generator=generator).unbind(0)  # 8 pages of 16 keys
    page_table = torch.tensor([[3, 5, 0, 1], [6, 7, 2, 4]], dtype=torch.int32)
    mask = torch.zeros(2, 1, 1, 64, dtype=torch.bool)
    mask[..., :20] = True  # only each sequence's first two pages (not page 0) are gathered

    def reference():
        return attention_with_kvcache_reference(q, k_cache, v_cache, page_table=page_table, attn_mask=mask,
                                                compute_dtype=torch.float64)

    expected = reference()
    k_cache[0], v_cache[0] = float("nan"), float("nan")
    got = reference()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_empty_queries_give_zero_and_minus_inf():
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=2, query_len=3, capacity=20, seqlens=[0, 1])
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isneginf(lse[0]).all()
    # Sequence 1 holds one token, the last of its 3 queries: queries 0 and 1 sit before the cache starts.
    assert torch.isneginf(lse[1, :2]).all() and torch.isfinite(lse[1, 2]).all()
    assert not torch.isnan(out).any()


def test_default_scale_and_lengths():
    problem = make_decode_problem(CPU_SPECS["gla2"], batch=2, query_len=1, capacity=30, seqlens=[30, 30], poison=False)
    kwargs = dict(problem.kwargs)
    full = glacompiler.attention_with_kvcache(**{**kwargs, "cache_seqlens": None})
    scaled = glacompiler.attention_with_kvcache(**kwargs, softmax_scale=1 / (64 + 16) ** 0.5)
    torch.testing.assert_close(full, scaled, rtol=0, atol=0)


def test_opcheck():
    problem = make_decode_problem(CPU_SPECS["gta"], batch=2, query_len=2, capacity=24, page_size=8, poison=False)
    kw = problem.kwargs
    args = (kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"], kw["k_rope_cache"], kw["cache_seqlens"],
            kw["page_table"], None, 0.1, True, 0)
    torch.library.opcheck(torch.ops.glacompiler.attention_with_kvcache.default, args)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    problem = make_decode_problem(CPU_SPECS["mla"], batch=2, query_len=3, capacity=24, poison=False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    assert out.shape == (2, 3, 16, 136) and lse.shape == (2, 3, 16) and lse.dtype == torch.float32


def test_under_torch_compile_without_graph_break():
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=2, query_len=1, capacity=24, poison=False)
    compiled = torch.compile(glacompiler.attention_with_kvcache, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(**problem.kwargs), glacompiler.attention_with_kvcache(**problem.kwargs))


def _base():
    return make_decode_problem(CPU_SPECS["gta"], batch=2, query_len=2, capacity=16, page_size=8, poison=False).kwargs


def _error_cases():
    def edit(**changes):
        def apply(kw):
            for key, value in changes.items():
                kw[key] = value(kw) if callable(value) else value
            return kw
        return apply

    return {
        "q dtype": (TypeError, "q has dtype", edit(q=lambda kw: kw["q"].to(torch.int32))),
        "q rank": (ValueError, "q must have 4", edit(q=lambda kw: kw["q"][0])),
        "k dtype": (TypeError, "k_cache has dtype", edit(k_cache=lambda kw: kw["k_cache"].half())),
        "q last dim": (ValueError, "q must be contiguous", edit(q=lambda kw: kw["q"].transpose(2, 3).contiguous().transpose(2, 3))),
        "k last dim": (ValueError, "k_cache must be contiguous", edit(k_cache=lambda kw: kw["k_cache"].transpose(2, 3).contiguous().transpose(2, 3))),
        "heads": (ValueError, "not a multiple", edit(q=lambda kw: torch.randn(2, 2, 7, 48), q_rope=lambda kw: torch.randn(2, 2, 7, 48))),
        "head dim": (ValueError, "q head dim", edit(q=lambda kw: torch.randn(2, 2, 8, 40))),
        "rope dim": (ValueError, "rope dim", edit(q_rope=lambda kw: torch.randn(2, 2, 8, 40))),
        "rope alone": (ValueError, "given together", edit(k_rope_cache=None)),
        "seqlens int64": (TypeError, "cache_seqlens must be int32", edit(cache_seqlens=lambda kw: kw["cache_seqlens"].long())),
        "seqlens len": (ValueError, "cache_seqlens has 3", edit(cache_seqlens=torch.ones(3, dtype=torch.int32))),
        "page table dtype": (TypeError, "page_table must be int32", edit(page_table=lambda kw: kw["page_table"].long())),
        "page size": (ValueError, "power of two", edit(k_cache=lambda kw: torch.randn(6, 6, 2, 96), k_rope_cache=lambda kw: torch.randn(6, 6, 48))),
        "query len": (ValueError, "query length", edit(q=lambda kw: torch.randn(2, 17, 8, 48), q_rope=lambda kw: torch.randn(2, 17, 8, 48))),
        "mask shape": (ValueError, "attn_mask shape", edit(attn_mask=torch.ones(2, 1, 2, 5, dtype=torch.bool))),
        "mask heads": (ValueError, "attn_mask shape", edit(attn_mask=torch.ones(1, 2, 1, 16, dtype=torch.bool))),
        "mask rank": (ValueError, "attn_mask shape", edit(attn_mask=torch.ones(1, 2, 8, 2, 16, dtype=torch.bool))),
        "mask dtype": (TypeError, "attn_mask must be bool", edit(attn_mask=torch.ones(2, 1, 2, 16, dtype=torch.int32))),
        "num splits": (ValueError, "num_splits", edit(num_splits=0)),
        "too many splits": (ValueError, "num_splits", edit(num_splits=MAX_SPLITS + 1)),
        "scale": (TypeError, "softmax_scale", edit(softmax_scale="0.1")),
        "scale bool": (TypeError, "softmax_scale must be a float", edit(softmax_scale=True)),
        "scale inf": (ValueError, "softmax_scale must be finite", edit(softmax_scale=float("inf"))),
        "scale nan": (ValueError, "softmax_scale must be finite", edit(softmax_scale=float("nan"))),
        "causal None": (TypeError, "causal must be a bool", edit(causal=None)),
        "causal str": (TypeError, "causal must be a bool", edit(causal="no")),
        "no heads": (ValueError, "q has no heads", edit(q=lambda kw: kw["q"][:, :, :0], q_rope=lambda kw: kw["q_rope"][:, :, :0])),
        "v heads": (ValueError, "v_cache shape", edit(v_cache=torch.randn(6, 8, 3, 96))),
        "SDPA layout": (ValueError, r"SDPA's \[B, H, L, D\] layout, pass q.transpose\(1, 2\)",
                        edit(q=torch.randn(2, 8, 1, 32), k_cache=torch.randn(2, 2, 16, 32), v_cache=torch.randn(2, 2, 16, 32),
                             q_rope=None, k_rope_cache=None, page_table=None)),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_bad_input_names_the_argument(case):
    error, message, change = _error_cases()[case]
    kwargs = change(_base())
    with pytest.raises(error, match=message):
        glacompiler.attention_with_kvcache(**kwargs)


def test_causal_takes_zero_and_one_as_bools():
    kwargs = _base()  # (two query tokens: causality changes the first one's keys)
    outputs = {}
    for flag in (False, True):
        outputs[flag] = glacompiler.attention_with_kvcache(**{**kwargs, "causal": flag})
        torch.testing.assert_close(glacompiler.attention_with_kvcache(**{**kwargs, "causal": int(flag)}),
                                   outputs[flag], rtol=0, atol=0)
    assert not torch.equal(outputs[False], outputs[True])
