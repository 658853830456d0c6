"""Issue section 3: sites whose math our op does not compute are left alone (and reported with the reason),
and the graph still computes what eager computes."""
import math

import pytest
import torch
import torch.nn.functional as F

import glacompiler
from test_backend_patterns import B, D, GROUP, HKV, HQ, LATENT, S, lengths_mask, randn, repeat_kv, sdpa_inputs
from test_backend_support import assert_close, compile_and_count, run_pass


def assert_left_alone(result, reason_part):
    assert result.statuses == ["skipped"], result.reasons
    assert reason_part in result.reasons
    assert result.after["gla"] == 0
    assert result.after == result.before


def key_not_transposed(q, k, v):
    """q @ k without the transpose (D == S here so it runs): the contraction reads K's positions."""
    return ((q @ k) / math.sqrt(D)).softmax(-1) @ v


def test_key_not_transposed():
    torch.manual_seed(0)
    q, k, v = randn(B, HQ, 1, D), randn(B, HQ, D, D), randn(B, HQ, D, D)
    result = run_pass(key_not_transposed, q, k, v)
    assert_left_alone(result, "not contiguous")
    assert_close(result.output, key_not_transposed(q, k, v))


def batch_and_heads_swapped(q, k, v):
    """K's batch and head axes swapped (B == H): still attention, over other keys; followed exactly."""
    return ((q @ k.transpose(0, 1).transpose(-1, -2)) * D ** -0.5).softmax(-1) @ v.transpose(0, 1)


def test_key_with_swapped_axes_is_followed_exactly():
    torch.manual_seed(0)
    q, k, v = randn(4, 4, 1, D), randn(4, 4, S, D), randn(4, 4, S, D)
    result = run_pass(batch_and_heads_swapped, q, k, v)
    assert result.statuses == ["rewritten"], result.reasons
    assert_close(result.output, batch_and_heads_swapped(q, k, v))


@pytest.mark.parametrize("dim", [1, 2])
def test_softmax_over_another_dim(dim):
    torch.manual_seed(0)
    q, k, v = sdpa_inputs(query_len=3)

    def attend(q, k, v):
        k, v = repeat_kv(k, GROUP), repeat_kv(v, GROUP)
        return ((q @ k.transpose(-1, -2)) / math.sqrt(D)).softmax(dim=dim) @ v

    result = run_pass(attend, q, k, v)
    assert_left_alone(result, f"softmax runs over dim {dim}")
    assert "; to fuse: nothing: a softmax over heads or query positions is not attention" in result.reasons
    assert_close(result.output, attend(q, k, v))


def test_sdpa_dropout_active():
    """On CPU, SDPA with dropout decomposes to the math path: the dropout multiplies the probabilities.
    (GPU graphs keep a fused SDPA node with dropout_p > 0: tests/test_backend_gpu.py.)"""
    q, k, v = sdpa_inputs()
    result = run_pass(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, enable_gqa=True), q, k, v)
    assert result.statuses == ["skipped"] and "dropout" in result.reasons
    assert result.after["gla"] == 0


def test_dropout_on_probabilities_in_training():
    q, k, v = sdpa_inputs()

    def attend(q, k, v):
        probs = ((q @ repeat_kv(k, GROUP).transpose(-1, -2)) * D ** -0.5).softmax(-1)
        return F.dropout(probs, p=0.5, training=True) @ repeat_kv(v, GROUP)

    result = run_pass(attend, q, k, v)
    assert result.statuses == ["skipped"] and "dropout" in result.reasons
    assert result.after["gla"] == 0


def test_training_graph_is_left_alone():
    """With gradients the graph Inductor gets is the joint forward+backward graph: the op has no backward."""
    q, k, v = (t.requires_grad_() for t in sdpa_inputs())
    glacompiler.reset_report()
    torch._dynamo.reset()
    attend = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), backend="gla")
    out = attend(q, k, v)
    out.sum().backward()
    (record,) = glacompiler.compile_report()
    assert record.status == "skipped" and "training" in record.reason
    assert "; to fuse: run decoding under torch.no_grad() or torch.inference_mode()" in record.reason, record.reason
    reference = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*reference, enable_gqa=True).sum().backward()
    assert_close(q.grad, reference[0].grad)


@pytest.mark.parametrize("returned", ["probabilities", "scores"])
def test_intermediate_used_elsewhere(returned):
    q, k, v = sdpa_inputs()

    def attend(q, k, v):
        scores = (q @ repeat_kv(k, GROUP).transpose(-1, -2)) * D ** -0.5
        probs = scores.softmax(-1)
        return probs @ repeat_kv(v, GROUP), (probs if returned == "probabilities" else scores)

    result = run_pass(attend, q, k, v)
    assert_left_alone(result, "used elsewhere")
    for ours, theirs in zip(result.output, attend(q, k, v)):
        assert_close(ours, theirs)


def test_fill_that_still_takes_part():
    """masked_fill with -1 is not a mask: filled scores still get softmax weight."""
    q, k, v = sdpa_inputs()
    valid = lengths_mask([4, 9])

    def attend(q, k, v, valid):
        scores = (q @ repeat_kv(k, GROUP).transpose(-1, -2)) * D ** -0.5
        return scores.masked_fill(~valid[:, None, None, :], -1.0).softmax(-1) @ repeat_kv(v, GROUP)

    result = run_pass(attend, q, k, v, valid)
    assert_left_alone(result, "still takes part")
    assert_close(result.output, attend(q, k, v, valid))


def test_float16_lowest_fill_scaled_down_still_takes_part():
    """masked_fill with -65504 (float16's lowest: a mask) and then * 0.5: the fill becomes -32752 in the softmax,
    where a masked key can still get weight. The threshold applies to the fill as scaled, so the site stays."""
    q, k, v = sdpa_inputs()
    valid = lengths_mask([4, 9])

    def attend(q, k, v, valid):
        scores = q @ repeat_kv(k, GROUP).transpose(-1, -2)
        return (scores.masked_fill(~valid[:, None, None, :], -65504.0) * 0.5).softmax(-1) @ repeat_kv(v, GROUP)

    result = run_pass(attend, q, k, v, valid)
    assert_left_alone(result, "still takes part")
    assert_close(result.output, attend(q, k, v, valid))


def _latent_attention(q_latent, q_rope, latent, rope_key):
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    return torch.einsum("bhls,bsc->blhc", (scores * 0.1).softmax(-1), latent)


@pytest.mark.parametrize("case, reason", [
    ("head_dim_20", "multiples of 8"),
    ("value_dim_520", "to 512"),
    ("rope_dim_24", "rope dim 24"),
    ("float64", "supported dtype"),
    ("prefill_20_tokens", "prefill"),
])
def test_shapes_the_op_does_not_support(case, reason):
    torch.manual_seed(0)
    if case == "head_dim_20":
        args = (randn(B, HQ, 1, 20), randn(B, HKV, S, 20), randn(B, HKV, S, 20))
    elif case == "value_dim_520":
        args = (randn(B, HQ, 1, D), randn(B, HKV, S, D), randn(B, HKV, S, 520))
    elif case == "float64":
        args = tuple(t.double() for t in sdpa_inputs())
    elif case == "prefill_20_tokens":
        args = sdpa_inputs(query_len=20)
    if case == "rope_dim_24":
        fn = _latent_attention
        args = (randn(B, 1, HQ, LATENT), randn(B, 1, HQ, 24), randn(B, S, LATENT), randn(B, S, 24))
    else:
        def fn(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=case == "prefill_20_tokens", enable_gqa=True)
    result = run_pass(fn, *args)
    assert_left_alone(result, reason)
    assert_close(result.output, fn(*args))


def test_skipped_site_still_reports_its_spec():
    """A prefill site is understood (kind, heads, dims) even though it is left to Inductor."""
    result = run_pass(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                      *sdpa_inputs(query_len=20))
    (record,) = result.records
    assert record.kind == "gqa" and record.spec.num_q_heads == HQ and record.spec.num_kv_heads == HKV


def test_full_backend_leaves_wrong_softmax_dim_correct():
    q, k, v = sdpa_inputs(query_len=3)

    def attend(q, k, v):
        return ((q @ repeat_kv(k, GROUP).transpose(-1, -2)) / math.sqrt(D)).softmax(dim=1) @ repeat_kv(v, GROUP)

    output, counts, records = compile_and_count(attend, q, k, v)
    assert [r.status for r in records] == ["skipped"]
    assert counts[0]["gla"] == 0
    assert_close(output, attend(q, k, v))
