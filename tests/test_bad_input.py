"""Inputs the op cannot check without reading values: lengths past the capacity or negative, page ids outside
the cache, and a batch of 0 sequences.

CPU tensors are checked (no device sync there): a ValueError naming the argument, on the reference path and
under the interpreter. On a GPU the kernels bound those values instead (kernels/common/clamps.py): the rows
that hold them get unspecified results, every other row is right, and nothing is read outside the tensors;
GLACOMPILER_DEBUG=1 checks and raises there too."""
import os
import subprocess
import sys

import pytest
import torch

import glacompiler
from glacompiler.kernels import KernelCall, choose_family
from glacompiler.op.dispatch import choose_config
from glacompiler.op.validation import validate_inputs
from glacompiler.presets import PAPER_SPECS
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import AttentionSpec

from kernel_cases import CPU_SPECS

BAD_VALUES = {"length past the capacity": 10**6, "negative length": -5, "huge page": 2**30, "negative page": -3,
              "page one past the pool": "pool"}


def problem_with_bad_values(spec, device, dtype, page_size, bad_length=None, bad_page=None, batch=3, capacity=96,
                            softmax_scale=None):
    """A problem whose sequence 0 holds a bad length or page id (the other sequences are valid), and the float32
    reference output of the problem before the bad value went in."""
    problem = make_decode_problem(spec, batch=batch, query_len=2, capacity=capacity, page_size=page_size,
                                  dtype=dtype, device=device, seqlens=[capacity] * batch, poison=False,
                                  generator=torch.Generator().manual_seed(3))
    kw = problem.kwargs
    if softmax_scale is not None:
        kw["softmax_scale"] = softmax_scale
    expected, _ = problem.reference(torch.float32)
    if bad_length is not None:
        kw["cache_seqlens"][0] = bad_length
    if bad_page is not None:
        kw["page_table"][0, 1] = kw["k_cache"].shape[0] if bad_page == "pool" else bad_page
    return problem, expected


def assert_valid_rows_right(out, expected, rows=slice(1, None)):
    """Sequence 0 is unspecified (but finite: nothing outside the tensors was read); the others match the
    float32 reference."""
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[rows].float().cpu(), expected[rows].float().cpu(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("interpreted", [False, True])
@pytest.mark.parametrize("what, value", [("length", 10**6), ("length", -5), ("page", 2**30), ("page", -3)])
def test_cpu_calls_name_the_bad_argument(what, value, interpreted, monkeypatch):
    if interpreted:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    problem, _ = problem_with_bad_values(CPU_SPECS["gta"], "cpu", torch.float32, 16,
                                         bad_length=value if what == "length" else None,
                                         bad_page=value if what == "page" else None)
    message = "cache_seqlens must lie in" if what == "length" else "page_table holds page ids outside"
    with pytest.raises(ValueError, match=message):
        glacompiler.attention_with_kvcache(**problem.kwargs)
    with pytest.raises(ValueError, match=message):  # the op as the backend calls it
        kw = problem.kwargs
        torch.ops.glacompiler.attention_with_kvcache(kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"],
                                                     kw["k_rope_cache"], kw["cache_seqlens"], kw["page_table"],
                                                     None, 0.1, True, 0)
    with pytest.raises(ValueError, match=message):  # the tuner's and benchmarks' path
        glacompiler.attention_with_kvcache_config(**problem.kwargs, config=glacompiler.PortableConfig(num_splits=2))


def _applicable(bad: str, page_size: int) -> bool:
    return page_size > 0 or "page" not in bad  # contiguous caches have no page ids


@pytest.mark.parametrize("bad, page_size", [(bad, page_size) for page_size in (0, 16, 64) for bad in BAD_VALUES
                                            if _applicable(bad, page_size)])
def test_interpreted_kernels_bound_what_the_op_does_not_check(bad, page_size, interpret_kernels):
    """The portable kernels launched directly with values the op would refuse on CPU: they stay inside the
    tensors (the interpreter reads host memory: a stray load reads garbage or crashes), and the valid rows are
    right. Pages of 16 keys are read per key, pages of 64 (whole key blocks) once per block."""
    value = BAD_VALUES[bad]
    problem, expected = problem_with_bad_values(CPU_SPECS["gqa"], "cpu", torch.float32, page_size,
                                                bad_length=value if "length" in bad else None,
                                                bad_page=value if "page" in bad else None, softmax_scale=0.1)
    kw = problem.kwargs
    spec, shape = validate_inputs(kw["q"], kw["k_cache"], kw["v_cache"], None, None, kw["cache_seqlens"],
                                  kw["page_table"], None, None, None)
    call = KernelCall(kw["q"], kw["k_cache"], kw["v_cache"], None, None, kw["cache_seqlens"], kw["page_table"],
                      None, 0.1, True)
    family = choose_family(spec, shape, call)
    config = choose_config(family, spec, shape, call.q.device, num_splits=3)
    out, lse = family.launch(call, spec, shape, config)
    assert_valid_rows_right(out, expected)


@pytest.mark.parametrize("interpreted", [False, True])
@pytest.mark.parametrize("name", ["gqa", "mla"])
def test_a_batch_of_no_sequences_gives_empty_outputs(name, interpreted, monkeypatch):
    if interpreted:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = CPU_SPECS[name]
    q = torch.randn(0, 2, spec.num_q_heads, spec.head_dim_q)
    k_cache = torch.randn(0, 32, spec.num_kv_heads, spec.head_dim_k)
    v_cache = None if spec.tied else torch.randn(0, 32, spec.num_kv_heads, spec.head_dim_v)
    rope = dict(q_rope=torch.randn(0, 2, spec.num_q_heads, spec.rope_dim), k_rope_cache=torch.randn(0, 32, spec.rope_dim)) \
        if spec.rope_dim else {}
    mask = torch.ones(0, 1, 2, 32, dtype=torch.bool)
    out, lse = glacompiler.attention_with_kvcache(q, k_cache, v_cache, **rope, attn_mask=mask,
                                                  cache_seqlens=torch.zeros(0, dtype=torch.int32), return_lse=True)
    assert out.shape == (0, 2, spec.num_q_heads, spec.head_dim_v) and lse.shape == (0, 2, spec.num_q_heads)
    assert torch.ops.glacompiler.mask_key_range(mask, 0, 32).shape == (3, 0)


@pytest.mark.parametrize("mask, batch, capacity, error, message", [
    (torch.tensor(True), 2, 40, ValueError, r"attn_mask shape \(\) is not broadcastable"),
    (torch.ones(40, dtype=torch.bool), -1, 40, ValueError, "batch must be an int >= 0"),
    (torch.ones(40, dtype=torch.bool), 2, 40.0, ValueError, "capacity must be an int >= 0"),
    (torch.ones(2, 1, 1, 39, dtype=torch.bool), 2, 40, ValueError, "attn_mask shape"),
    (torch.ones(40, dtype=torch.int32), 2, 40, TypeError, "attn_mask must be bool"),
], ids=["0-d mask", "negative batch", "float capacity", "short mask", "int mask"])
def test_mask_key_range_names_its_bad_argument(mask, batch, capacity, error, message):
    with pytest.raises(error, match=message):
        glacompiler.mask_key_range(mask, batch, capacity)


@pytest.mark.parametrize("strided", ["lengths", "page table", "both"])
def test_strided_lengths_and_page_tables_are_read_right(strided, interpret_kernels):
    """The kernels read lengths and page-table columns as adjacent entries: views with other strides (an
    expanded length, a column slice) are made contiguous first."""
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=3, query_len=1, capacity=64, page_size=16,
                                  generator=torch.Generator().manual_seed(9))
    kw = problem.kwargs
    if strided in ("lengths", "both"):
        kw["cache_seqlens"] = torch.stack([kw["cache_seqlens"], torch.zeros_like(kw["cache_seqlens"])], 1)[:, 0]
        assert kw["cache_seqlens"].stride(0) == 2
    if strided in ("page table", "both"):
        table = kw["page_table"]
        kw["page_table"] = torch.stack([table, torch.full_like(table, 2**30)], 2).flatten(1)[:, ::2]
        assert kw["page_table"].stride(1) == 2
    out, lse = glacompiler.attention_with_kvcache(**kw, return_lse=True)
    check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("debug", [False, True])
def test_with_only_a_mask_page_ids_are_checked_up_to_its_end(debug, debug_checks):
    """No lengths, a mask over the first keys (a static cache's filled prefix): page-table slots past the mask's
    last allowed key may hold anything, as in serving caches; a bad id inside that range is refused."""
    debug_checks(debug)
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=2, query_len=1, capacity=64, page_size=16,
                                  seqlens=[64, 64], poison=False, generator=torch.Generator().manual_seed(4))
    kw = problem.kwargs
    kw["cache_seqlens"] = None
    kw["attn_mask"] = (torch.arange(64) < torch.tensor([20, 40])[:, None])[:, None, None, :]
    kw["page_table"][0, 2:] = 2**30  # sequence 0 attends to keys below 20: pages 0 and 1 only
    expected, _ = problem.reference(torch.float64)
    torch.testing.assert_close(glacompiler.attention_with_kvcache(**kw).double(), expected, rtol=1e-5, atol=1e-5)
    kw["page_table"][0, 1] = 2**30
    with pytest.raises(ValueError, match="page_table holds page ids outside"):
        glacompiler.attention_with_kvcache(**kw)


def test_a_paged_cache_without_pages_is_refused():
    q = torch.randn(2, 1, 4, 16)
    with pytest.raises(ValueError, match="k_cache holds no pages"):
        glacompiler.attention_with_kvcache(q, torch.randn(0, 16, 2, 16), torch.randn(0, 16, 2, 16),
                                           page_table=torch.zeros(2, 1, dtype=torch.int32))


# ---- on a GPU: nothing checks the values, the kernels bound them ---------------------------------------------
GPU_CASES = [("gqa", 64), ("gta", 16), ("mla", 64), ("gla2", 32), ("mla", 0)]  # mla/gla2: the Hopper kernel on sm_90


@pytest.mark.gpu
@pytest.mark.parametrize("name, page_size, bad", [(name, page_size, bad) for name, page_size in GPU_CASES
                                                  for bad in BAD_VALUES if _applicable(bad, page_size)])
def test_gpu_kernels_bound_lengths_and_page_ids(name, page_size, bad, cuda_device):
    value = BAD_VALUES[bad]
    problem, expected = problem_with_bad_values(PAPER_SPECS[name], cuda_device, torch.bfloat16, page_size,
                                                bad_length=value if "length" in bad else None,
                                                bad_page=value if "page" in bad else None, capacity=1024)
    for num_splits in (None, 3):
        out = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits)
        torch.cuda.synchronize()  # an out-of-bounds read would surface here (and under compute-sanitizer)
        assert_valid_rows_right(out, expected)


@pytest.mark.gpu
def test_gpu_debug_mode_checks_and_raises(cuda_device, debug_checks):
    problem, _ = problem_with_bad_values(PAPER_SPECS["gqa"], cuda_device, torch.bfloat16, 64, bad_page=2**30)
    debug_checks(False)
    glacompiler.attention_with_kvcache(**problem.kwargs)  # no sync, no check on the hot path
    debug_checks(True)
    with pytest.raises(ValueError, match="page ids outside"):
        glacompiler.attention_with_kvcache(**problem.kwargs)


@pytest.mark.gpu
def test_gpu_batch_of_no_sequences(cuda_device):
    spec = AttentionSpec.latent(128, 1, 512, 64)
    q = torch.randn(0, 1, 128, 512, device=cuda_device, dtype=torch.bfloat16)
    cache = torch.randn(8, 64, 1, 512, device=cuda_device, dtype=torch.bfloat16)
    out = glacompiler.attention_with_kvcache(q, cache, q_rope=torch.randn(0, 1, 128, 64, device=cuda_device,
                                             dtype=torch.bfloat16), k_rope_cache=torch.randn(8, 64, 64, device=cuda_device,
                                             dtype=torch.bfloat16), page_table=torch.zeros(0, 4, dtype=torch.int32,
                                             device=cuda_device))
    assert out.shape == (0, 1, spec.num_q_heads, 512)


@pytest.mark.parametrize("value,expected", [("1", "True True False"), ("0", "False False False"),
                                            ("", "False False False")])
def test_debug_checks_are_read_from_the_environment_at_import(value, expected):
    """GLACOMPILER_DEBUG=1 at import turns the value checks on (read once: every repeat call asks);
    set_debug_checks changes the setting and returns the one before."""
    code = ("import glacompiler; from glacompiler.op.validation import debug_checks_enabled as on; "
            "print(on(), glacompiler.set_debug_checks(False), on())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "GLACOMPILER_DEBUG": value}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected.split()


def test_set_debug_checks_takes_a_bool(debug_checks):
    with pytest.raises(TypeError, match="enabled must be a bool"):
        glacompiler.set_debug_checks(1)
