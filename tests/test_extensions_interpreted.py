"""FlashAttention's extensions (softcap, alibi_slopes, sinks, window_size) on the portable kernels under the Triton
interpreter (CPU), alone and together, against the float64 reference with FlashAttention's error rule; and the
reference itself against a naive per-row formulation written independently of it."""
import math
import zlib

import numpy
import pytest
import torch

import glacompiler
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.reference import attention_with_kvcache_reference

from extension_cases import extension_arguments
from kernel_cases import CPU_SPECS

CAPACITY = 70  # not a multiple of any key block


def problem_with(spec_name, features, *, query_len=1, page_size=0, dtype=torch.float32, mask=None,
                 mask_rows="key", causal=True, batch=4, seqlens=(0, 1, 37, CAPACITY), capacity=CAPACITY):
    seed = zlib.crc32(f"{spec_name}-{features}-{query_len}-{page_size}-{mask}".encode())
    generator = torch.Generator().manual_seed(seed)
    spec = CPU_SPECS[spec_name]
    problem = make_decode_problem(spec, batch=batch, query_len=query_len, capacity=capacity, page_size=page_size,
                                  dtype=dtype, seqlens=seqlens, mask=mask, mask_rows=mask_rows, causal=causal,
                                  generator=generator)
    problem.kwargs.update(extension_arguments(features, spec, batch, generator, dtype))
    return problem


def run_and_check(problem, **kwargs):
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, **kwargs)
    return check_fa_rule(out, lse, problem)


# --- the reference against a naive formulation ---------------------------------------------------------------

def naive_attention(q, k, v, lengths, scale, causal, softcap, slopes, sinks, window):
    """One (sequence, head, token) row at a time, in float64, straight from FlashAttention's definitions."""
    batch, query_len, heads, _ = q.shape
    group = heads // k.shape[2]
    out = torch.zeros(batch, query_len, heads, v.shape[-1], dtype=torch.float64)
    lse = torch.full((batch, query_len, heads), -math.inf, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(query_len):
                position = int(lengths[b]) - query_len + i
                logits, values = [], []
                for j in range(int(lengths[b])):
                    if causal and j > position:
                        continue
                    if window[0] >= 0 and j < position - window[0]:
                        continue
                    if window[1] >= 0 and j > position + window[1]:
                        continue
                    score = float(q[b, i, h].double() @ k[b, j, h // group].double()) * scale
                    if softcap:
                        score = softcap * math.tanh(score / softcap)
                    if slopes is not None:
                        slope = float(slopes[h] if slopes.dim() == 1 else slopes[b, h])
                        score -= slope * abs(position - j)
                    logits.append(score)
                    values.append(v[b, j, h // group].double())
                if sinks is not None:
                    logits.append(float(sinks[h]))
                    values.append(torch.zeros(v.shape[-1], dtype=torch.float64))
                if not logits:
                    continue
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                total = sum(weights)
                out[b, i, h] = sum(w * val for w, val in zip(weights, values)) / total
                lse[b, i, h] = top + math.log(total)
    return out, lse


@pytest.mark.parametrize("features, causal, query_len", [
    ("softcap", True, 1), ("alibi", True, 3), ("alibi_batch", False, 2), ("sinks", True, 2), ("window", True, 3),
    ("window_right", False, 3), ("softcap+alibi+sinks+window", True, 2),
])
def test_reference_matches_naive_rows(features, causal, query_len):
    problem = problem_with("gqa", features, query_len=query_len, causal=causal, seqlens=(0, 5, 23), batch=3,
                           capacity=24)
    kw = problem.kwargs
    out, lse = problem.reference(torch.float64)
    lengths = kw["cache_seqlens"]
    scale = 1 / math.sqrt(kw["q"].shape[-1])
    expected_out, expected_lse = naive_attention(
        kw["q"], kw["k_cache"], kw["v_cache"], lengths, scale, causal, kw.get("softcap", 0.0),
        kw.get("alibi_slopes"), kw.get("sinks"), kw.get("window_size", (-1, -1)))
    assert torch.allclose(out, expected_out, atol=1e-10)
    assert torch.equal(torch.isinf(lse), torch.isinf(expected_lse))
    finite = ~torch.isinf(expected_lse)
    assert torch.allclose(lse[finite], expected_lse[finite], atol=1e-10)
    if "sinks" in features:  # the empty sequence's rows see only the sink: out 0, lse = the sink
        assert torch.equal(lse[0], kw["sinks"].double().expand(query_len, -1))
        assert not out[0].any()


# --- the kernels under the interpreter ------------------------------------------------------------------------

# Each feature on its own layout (GQA, MHA, MQA, GTA; Lq 1 to 3; contiguous, pages of 1 and of 16 keys).
FEATURE_CASES = [
    ("softcap", "gqa", 1, 0), ("alibi", "mha", 3, 16), ("alibi_batch", "gta", 2, 1), ("sinks", "mqa", 2, 16),
    ("window", "gqa", 3, 1), ("window_right", "mha", 3, 0), ("softcap+alibi+sinks+window", "gta", 2, 16),
    ("softcap+alibi+sinks+window", "gqa", 1, 16),
]


@pytest.mark.parametrize("features, spec_name, query_len, page_size", FEATURE_CASES)
def test_extensions_float32(interpret_kernels, spec_name, query_len, page_size, features):
    causal = features != "window_right"
    problem = problem_with(spec_name, features, query_len=query_len, page_size=page_size, causal=causal)
    # Splits 1 (direct write) and 3 (LSE combine: a sink must count once, some splits empty).
    run_and_check(problem, num_splits=1)
    run_and_check(problem, num_splits=3)


@pytest.mark.parametrize("spec_name, features", [("mla", "sinks+window"), ("gla2", "sinks"), ("gla8", "window")])
def test_latent_layouts_take_sinks_and_window(interpret_kernels, spec_name, features):
    problem = problem_with(spec_name, features, query_len=2, page_size=16)
    run_and_check(problem, num_splits=2)


@pytest.mark.parametrize("features, mask, mask_rows", [
    ("softcap+alibi", "bool", "key"), ("sinks+window", "additive", "head"), ("alibi_batch+window_right", "bool", "token"),
    ("softcap+alibi+sinks+window", "additive", "key"),
])
def test_extensions_with_masks(interpret_kernels, features, mask, mask_rows):
    causal = "window_right" not in features
    problem = problem_with("gqa", features, query_len=3, page_size=16, mask=mask, mask_rows=mask_rows,
                           causal=causal)
    run_and_check(problem, num_splits=2)


@pytest.mark.parametrize("spec_name, features", [("gqa", "softcap+alibi+sinks+window"), ("gla2", "sinks+window")])
def test_extensions_float16(interpret_kernels, spec_name, features):
    problem = problem_with(spec_name, features, query_len=2, page_size=16, dtype=torch.float16)
    run_and_check(problem)
    run_and_check(problem, num_splits=4)


def test_window_with_mask_and_no_lengths_places_queries_at_the_capacity(interpret_kernels):
    """Without cache_seqlens the queries sit at the capacity's end (as the reference has it), even where a mask
    would otherwise stand in for the lengths."""
    problem = problem_with("gqa", "alibi+window", query_len=1, mask="bool", mask_rows="key", causal=False,
                           seqlens=(CAPACITY,) * 4)
    problem.kwargs["cache_seqlens"] = None
    problem.kwargs["attn_mask"][..., 50:] = False  # the mask ends well before the capacity
    run_and_check(problem, num_splits=2)


@pytest.mark.parametrize("split_count", [1, 3])
def test_window_skips_out_of_window_key_blocks(interpret_kernels, split_count):
    """A cache that holds the whole length: keys older than the window are never read (whole key blocks are
    skipped, the first block's older keys masked off its loads). Poisoned with NaN, the result stays right."""
    from glacompiler.kernels.portable import PortableConfig

    capacity = 128
    problem = problem_with("gqa", "window", query_len=2, seqlens=(capacity, 100), batch=2, capacity=capacity)
    problem.kwargs["window_size"] = (40, -1)
    expected = problem.reference(torch.float64)
    block_n = 16
    for b, length in enumerate((capacity, 100)):
        first_seen = length - 2 - 40  # the first query's window start
        for cache in (problem.kwargs["k_cache"], problem.kwargs["v_cache"]):
            cache[b, :first_seen] = float("nan")
    config = PortableConfig(block_m=16, block_n=block_n, block_d=64, num_splits=split_count)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    assert torch.allclose(out.double(), expected[0], atol=1e-5)
    assert torch.allclose(lse.double(), expected[1], atol=1e-5)


def test_sinks_only_rows_give_zero_output_and_the_sink_as_lse(interpret_kernels):
    """A row with nothing to attend to sees only its sink: out 0, lse = sink (never NaN), with splits too."""
    problem = problem_with("gqa", "sinks", query_len=1, seqlens=(0, 0), batch=2)
    for splits in (1, 3):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True, num_splits=splits)
        assert torch.equal(out, torch.zeros_like(out))
        assert torch.allclose(lse, problem.kwargs["sinks"].expand_as(lse), rtol=0, atol=1e-6)


def test_the_soft_caps_tanh_against_float64(interpret_kernels):
    """tanh_via_exp2 within 1e-6 of tanh relatively at every |x| (both sides of its series' switch at 1/16, where
    each part is at its worst), odd, +-1 at +-inf, NaN through, and signed zeros kept."""
    from softcap_tanh_kernel import TANH_SERIES_BELOW, tanh_kernel  # (imported once the interpreter is on)

    switch = numpy.float32(TANH_SERIES_BELOW.value)
    near = [numpy.nextafter(switch, numpy.float32(0)), switch, numpy.nextafter(switch, numpy.float32(1))]
    magnitudes = torch.cat([torch.logspace(-30, 1.5, 1000), torch.linspace(0.03, 0.2, 1000),
                            torch.tensor([float(v) for v in near])]).float()
    x = torch.cat([magnitudes, -magnitudes, torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan")])])
    padded = torch.zeros(4096)
    padded[:x.numel()] = x
    y = torch.empty_like(padded)
    tanh_kernel[(1,)](padded, y, N=4096)
    y = y[:x.numel()]
    finite = torch.isfinite(x) & (x != 0)
    expected = torch.tanh(x.double())
    relative = ((y.double() - expected).abs() / expected.abs())[finite]
    assert relative.max() < 1e-6, f"relative error {relative.max():.2e}"
    count = magnitudes.numel()
    assert torch.equal(y[count:2 * count], -y[:count])  # odd
    tail = y[2 * count:]
    assert torch.equal(torch.signbit(tail[:2]), torch.tensor([False, True])) and not tail[:2].any()
    assert tail[2] == 1 and tail[3] == -1 and torch.isnan(tail[4])


@pytest.mark.parametrize("softcap", [1e3, 1e6, 1e8])
def test_caps_far_above_the_scores_keep_their_logits(interpret_kernels, softcap):
    """softcap * tanh(score / softcap) with score / softcap tiny: the series near 0 keeps the logits' digits, where
    1 - exp2(-2|x| log2 e) alone cancelled them (FA rule in float32 failed from about softcap 1e3 on; at 1e8 every
    row became a uniform average)."""
    problem = problem_with("gqa", "softcap", query_len=2, page_size=16)
    problem.kwargs["softcap"] = softcap
    run_and_check(problem, num_splits=2)


def test_features_off_match_the_plain_call(interpret_kernels):
    """softcap 0, no slopes or sinks and an unlimited window are the plain op, bit for bit."""
    problem = problem_with("gta", "", query_len=2, page_size=16)
    plain = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=2)
    explicit = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=2, softcap=0.0, alibi_slopes=None,
                                                  sinks=None, window_size=(-1, -1))
    assert torch.equal(plain, explicit)


def test_soft_capped_cpu_calls_are_the_reference():
    """The op's CPU path (no interpreter) hands a soft-capped call, which PyTorch's fused CPU kernel cannot express, to
    the reference with every extension, computed in float64 for float32 as that path computes (test_cpu_attention.py
    tests the other calls)."""
    problem = problem_with("gqa", "softcap+alibi+sinks+window", query_len=2, page_size=16)
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    ref_out, ref_lse = attention_with_kvcache_reference(**problem.kwargs, compute_dtype=torch.float64)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse.float())
