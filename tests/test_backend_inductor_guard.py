"""Issue section 3, inherited miscompile: Inductor's own attention fusion rewrites
((q @ k.transpose(-1, -2)) / sqrt(d)).softmax(dim=1) @ v into SDPA (its stored patterns ignore the softmax
dim: pytorch/pytorch#196468). Under backend="gla" that fusion must never fire; elsewhere it is untouched."""
import math

import pytest
import torch
from torch._dynamo.utils import counters

import glacompiler
from glacompiler.compiler.inductor_guard import guard_attention_fusions, is_attention_fusion
from test_backend_support import assert_close


def softmax_over_heads(q, k, v):
    return ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).softmax(dim=1) @ v


def proper_attention(q, k, v):
    return ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v


def inputs(query_len):
    torch.manual_seed(0)
    return torch.randn(2, 4, query_len, 16), torch.randn(2, 4, 8, 16), torch.randn(2, 4, 8, 16)


def compile_with(backend, fn, args):
    """Compile from scratch: a hit in Inductor's on-disk caches would skip the pattern passes we observe."""
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        return torch.compile(fn, backend=backend)(*args)


def test_default_inductor_still_miscompiles():
    """Documents the bug we guard against, in the installed torch. If this starts failing, Inductor fixed
    #196468 here: the guard then costs nothing but Inductor's (correct) fusion of attention we skip."""
    args = inputs(query_len=7)
    out = compile_with("inductor", softmax_over_heads, args)
    assert counters["inductor"]["fuse_attention"] >= 1
    assert (out - softmax_over_heads(*args)).abs().max() > 0.1


@pytest.mark.parametrize("query_len", [1, 7])
def test_gla_backend_is_correct_on_the_miscompiled_form(query_len):
    args = inputs(query_len)
    glacompiler.reset_report()
    out = compile_with("gla", softmax_over_heads, args)
    assert counters["inductor"]["fuse_attention"] == 0
    assert counters["glacompiler"]["inductor_attention_fusion_refused"] >= 1
    (record,) = glacompiler.compile_report()
    assert record.status == "skipped" and "softmax runs over dim 1" in record.reason
    assert_close(out, softmax_over_heads(*args))


def test_guard_is_off_outside_the_gla_backend():
    """After a gla compile, the default backend still fuses ordinary attention."""
    compile_with("gla", softmax_over_heads, inputs(1))
    args = inputs(query_len=7)
    out = compile_with("inductor", proper_attention, args)
    assert counters["inductor"]["fuse_attention"] >= 1
    assert counters["glacompiler"]["inductor_attention_fusion_refused"] == 0
    assert_close(out, proper_attention(*args))


def test_guard_finds_attention_patterns_by_content():
    from torch._inductor.fx_passes import joint_graph

    joint_graph.lazy_init()
    guarded = guard_attention_fusions()
    entries = [entry for entries in joint_graph.patterns.patterns.values() for entry in entries]
    attention = [entry for entry in entries if is_attention_fusion(entry)]
    assert guarded >= len(attention) > 0
    assert all(getattr(entry.extra_check, "glacompiler_guarded", False) for entry in attention)
    # Other joint-graph patterns (pad_mm, misc) keep their own checks.
    others = [entry for entry in entries if not is_attention_fusion(entry)]
    assert others and not any(getattr(entry.extra_check, "glacompiler_guarded", False) for entry in others)
    named = [entry for entry in entries if str(getattr(entry, "pattern_name", "") or "").startswith("_sfdp")]
    assert all(is_attention_fusion(entry) for entry in named)
