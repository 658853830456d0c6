"""Scores scaled by a tensor rather than a number: a learned temperature (a 0-d parameter), the tutorial's
q @ k^T / torch.sqrt(torch.tensor(d)), a learned scale per head. The op takes its scale as a number, so the pass
multiplies q by the tensor per query head ((t q) . k = t (q . k)); a tensor the scores of every head, row and key
do not share that way (per key, per sequence), or that would also scale a mask, a bias or a soft cap, is left alone
with its reason. Each positive is compared with eager on scores large enough that a dropped or misplaced scale
shows."""
import math

import pytest
import torch

import test_backend_support
from test_backend_support import assert_close, check_rewritten, compile_and_count, run_pass

aten = torch.ops.aten
B, HQ, HKV, S, D = 2, 8, 2, 24, 16
GROUP = HQ // HKV
LATENT, ROPE = 64, 16
CAP = 3.0
SCALE_ARGUMENT = 8  # the op's softmax_scale


def repeat_kv(x):
    return test_backend_support.repeat_kv(x, GROUP)


def inputs(query_len=1, batch=B, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, HQ, query_len, D, generator=generator) * 2
    k = torch.randn(batch, HKV, S, D, generator=generator)
    v = torch.randn(batch, HKV, S, D, generator=generator)
    valid = torch.arange(S)[None, :] < torch.tensor([9, S, 17][:batch])[:, None]
    return q, k, v, valid


def per_head(seed=1):
    """Per-head scales from 0.05 to 1.6: a head read with another head's scale would show."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(HQ, generator=generator) * 1.55 + 0.05


TEMPERATURE = torch.nn.Parameter(torch.tensor(0.7))
PER_HEAD = torch.nn.Parameter(per_head().reshape(HQ, 1, 1))  # a learned scale per head, [H, 1, 1]
PER_KEY = torch.rand(S) + 0.5


def scores_of(q, k):
    return torch.matmul(q, repeat_kv(k).transpose(2, 3))


def attend(scores, v):
    return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))


# ---- forms folded into q ---------------------------------------------------------------------------------------

def learned_temperature(q, k, v, valid):
    """A 0-d parameter times the scores, then transformers' additive mask."""
    scores = scores_of(q, k) * TEMPERATURE
    return attend(scores + torch.where(valid[:, None, None, :], 0.0, torch.finfo(torch.float32).min), v)


def tutorial_sqrt_of_a_tensor(q, k, v, valid):
    scores = scores_of(q, k) / torch.sqrt(torch.tensor(D, dtype=torch.float32))
    return attend(scores.masked_fill(~valid[:, None, None, :], -math.inf), v)


def learned_per_head(q, k, v, valid):
    scores = scores_of(q, k) * D ** -0.5 * PER_HEAD.to(q.dtype)  # (a model's parameters share its dtype)
    return attend(scores.masked_fill(~valid[:, None, None, :], -math.inf), v)


def per_head_divisor(q, k, v, valid):
    """Divided by a computed [1, H, 1, 1] tensor, the number applied after it."""
    scores = (scores_of(q, k) / PER_HEAD.exp()[None]) * 0.5
    return attend(torch.where(valid[:, None, None, :], scores, -math.inf), v)


def per_head_inside_the_cap(q, k, v, valid):
    """A per-head scale inside Gemma2's soft cap: cap * tanh(t s / cap) is the op's cap over (t q) . k."""
    scores = CAP * torch.tanh(scores_of(q, k) * PER_HEAD / CAP)
    return attend(scores.masked_fill(~valid[:, None, None, :], -math.inf), v)


def per_head_with_sinks(q, k, v, valid, sinks):
    """GPT-OSS's sink column beside scores scaled per head (the sink logit is not scaled)."""
    scores = (scores_of(q, k) * PER_HEAD).masked_fill(~valid[:, None, None, :], -math.inf)
    column = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
    probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)
    return torch.matmul(probs[..., :-1], repeat_kv(v))


def mla_per_head(q_latent, q_rope, latent, rope_key, valid):
    """MLA's absorbed decode, both score terms scaled per head: both query parts take the scale."""
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    scores = scores * PER_HEAD
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.einsum("bhls,bsc->blhc", scores.softmax(-1), latent)


def mla_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(B, 1, HQ, LATENT), (B, 1, HQ, ROPE), (B, S, LATENT), (B, S, ROPE)]
    q_latent, q_rope, latent, rope_key = (torch.randn(*shape, generator=generator) for shape in shapes)
    return q_latent * 0.5, q_rope * 2, latent, rope_key, inputs()[3]


def scale_of_call(result) -> float:
    return result.op_calls()[0].args[SCALE_ARGUMENT]


@pytest.mark.parametrize("fn, scale", [
    (learned_temperature, 1.0),
    (tutorial_sqrt_of_a_tensor, 1.0),
    (learned_per_head, D ** -0.5),
    (per_head_divisor, 0.5),
    (per_head_inside_the_cap, 1.0),
])
def test_scale_tensors_are_folded_into_q(fn, scale):
    """The op keeps the numbers as its softmax_scale; the tensor multiplies q before the call."""
    result = check_rewritten(fn, *inputs(query_len=2))
    assert scale_of_call(result) == pytest.approx(scale)
    query = result.op_calls()[0].args[0]
    assert query.target is torch.ops.prims.convert_element_type.default  # q times the tensor, in q's dtype
    assert query.args[0].target is aten.mul.Tensor


def test_the_scale_is_read_per_query_head_in_the_ops_order():
    """GQA: query head h reads KV head h // group. A per-head scale permuted by a wrong head order fails."""
    check_rewritten(learned_per_head, *inputs(seed=3))


def test_batch_one_takes_the_paired_dim_as_heads():
    """At batch 1 q and k vary along one paired dim, which a per-head scale says is the KV heads."""
    result = check_rewritten(learned_per_head, *inputs(batch=1))
    record = result.records[0]
    assert (record.kind, record.spec.num_q_heads, record.spec.num_kv_heads) == ("gqa", HQ, HKV), str(record)


def test_per_head_scale_beside_sinks():
    sinks = torch.linspace(-2.0, 4.0, HQ)
    result = check_rewritten(per_head_with_sinks, *inputs(query_len=2), sinks)
    assert result.op_calls()[0].args[14] is not None  # the sinks argument


def test_latent_terms_both_take_the_scale():
    result = check_rewritten(mla_per_head, *mla_inputs())
    call = result.op_calls()[0]
    for query in (call.args[0], call.args[3]):  # q and q_rope, both scaled
        assert query.target is torch.ops.prims.convert_element_type.default, query


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_through_the_backend(dtype):
    """The whole backend (Inductor after the pass) in half precision: the scaled q is stored in q's dtype, one
    rounding eager does not make; the error stays within twice eager's against float32."""
    q, k, v, valid = inputs(query_len=2)
    exact = learned_per_head(q, k, v, valid)
    low = [t.to(dtype) if t.is_floating_point() else t for t in (q, k, v)] + [valid]
    output, _, records = compile_and_count(learned_per_head, *low)
    assert [(r.status, r.form) for r in records] == [("rewritten", "decomposed softmax +scale tensor")], \
        [str(r) for r in records]
    eager_error = (learned_per_head(*low).float() - exact).abs().max().item()
    assert (output.float() - exact).abs().max().item() <= 2 * eager_error + 1e-3


# ---- forms left alone ------------------------------------------------------------------------------------------

def per_key_scale(q, k, v, valid):
    scores = scores_of(q, k) * PER_KEY
    return attend(scores.masked_fill(~valid[:, None, None, :], -math.inf), v)


def per_sequence_scale(q, k, v, valid):
    scores = scores_of(q, k) * (torch.arange(q.shape[0], dtype=torch.float32) + 0.5)[:, None, None, None]
    return attend(scores.masked_fill(~valid[:, None, None, :], -math.inf), v)


def mask_then_scale_tensor(q, k, v, valid):
    scores = scores_of(q, k) + torch.where(valid[:, None, None, :], 0.0, -1e4)
    return attend(scores * PER_HEAD, v)  # the mask is scaled per head too: not the op's math


def fill_then_scale_tensor(q, k, v, valid):
    return attend(scores_of(q, k).masked_fill(~valid[:, None, None, :], -1e9) * PER_HEAD, v)


def scale_tensor_outside_the_cap(q, k, v, valid):
    scores = PER_HEAD * (CAP * torch.tanh(scores_of(q, k) / CAP))  # a cap per head
    return attend(scores.masked_fill(~valid[:, None, None, :], -math.inf), v)


def two_scale_tensors(q, k, v, valid):
    scores = scores_of(q, k) * PER_HEAD * TEMPERATURE
    return attend(scores.masked_fill(~valid[:, None, None, :], -math.inf), v)


def mla_one_term_scaled(q_latent, q_rope, latent, rope_key, valid):
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) * PER_HEAD
    scores = scores + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.einsum("bhls,bsc->blhc", scores.softmax(-1), latent)


@pytest.mark.parametrize("fn, make_inputs, reason", [
    (per_key_scale, inputs, "vary along the key dim"),
    (per_sequence_scale, inputs, "vary along the batch dim"),
    (mask_then_scale_tensor, inputs, "before they are scaled by a tensor"),
    (fill_then_scale_tensor, inputs, "before they are scaled by a tensor"),
    (scale_tensor_outside_the_cap, inputs, "a cap per head"),
    (two_scale_tensors, inputs, "two tensors"),
])
def test_scale_tensors_the_op_cannot_take_are_reported(fn, make_inputs, reason):
    args = make_inputs()
    result = run_pass(fn, *args)
    assert result.after["gla"] == 0 and result.statuses == ["skipped"] and reason in result.reasons, result.reasons
    with torch.no_grad():
        assert_close(result.output, fn(*args), tol=1e-4)


def bias_from_a_product_times_a_tensor(q, k, v, valid, weight):
    """A bias computed by a product and scaled by a tensor, added beside the scores: a mask, not a score term."""
    bias = ((valid.float() @ weight) * TEMPERATURE)[:, None, None, :]
    return attend(scores_of(q, k) * 0.25 + bias, v)


def test_one_latent_term_times_a_tensor_is_a_bias_beside_the_other():
    """q_lat . c * t + q_pe . k_pe: the side reached only through the tensor is read as an additive bias (computed
    in the graph), the other as the scores; exact, if not the latent kernel's form."""
    result = check_rewritten(mla_one_term_scaled, *mla_inputs())
    assert result.records[0].mask == "additive", str(result.records[0])


def test_a_bias_computed_by_a_product_times_a_tensor_stays_a_mask():
    """Rewritten before scale tensors were walked; walking them made the bias a second score term (declined)."""
    weight = torch.randn(S, S, generator=torch.Generator().manual_seed(5))
    result = check_rewritten(bias_from_a_product_times_a_tensor, *inputs(), weight)
    assert result.records[0].mask == "additive", str(result.records[0])


def upcast_then_scaled(q, k, v, scale):
    """fp16 scores cast to float32, then scaled: eager never stores q * t in fp16."""
    scores = scores_of(q, k).float() * scale
    return torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), repeat_kv(v))


def test_float16_scores_scaled_in_float32_are_left_alone():
    """Folded into q, q * t would be stored in fp16 and overflow (a helper's draw: max |q| t = 2.7e5 gave NaN where
    eager is finite)."""
    q, k, v, _ = inputs()
    args = ((q * 20).half(), k.half(), v.half(), torch.tensor(2000.0))
    output, _, records = compile_and_count(upcast_then_scaled, *args)
    assert [r.status for r in records] == ["skipped"] and "float16 scores scaled by a tensor" in records[0].reason, \
        [str(r) for r in records]
    with torch.no_grad():
        expected = upcast_then_scaled(*args)
    assert torch.isfinite(expected).all() and torch.isfinite(output).all()
    torch.testing.assert_close(output, expected, rtol=2e-3, atol=2e-3)


# ---- on the GPU: the op's kernels (Inductor launches the portable ones) in bf16 ---------------------------------

def per_head_argument(q, k, v, valid, scale):
    """The per-head scale as an input of the graph ([H, 1, 1]), as a parameter becomes under dynamo."""
    scores = (scores_of(q, k) * scale).masked_fill(~valid[:, None, None, :], -math.inf)
    return attend(scores, v)


def mla_per_head_argument(q_latent, q_rope, latent, rope_key, valid, scale):
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    scores = (scores * scale).masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.einsum("bhls,bsc->blhc", scores.softmax(-1), latent)


@pytest.mark.gpu
@pytest.mark.parametrize("fn, make_inputs, kind", [(per_head_argument, inputs, "gqa"),
                                                   (mla_per_head_argument, mla_inputs, "mla")])
def test_per_head_scale_on_gpu_bf16(cuda_device, fn, make_inputs, kind):
    """FlashAttention's rule against float32: the error of the compiled bf16 graph is at most twice eager's."""
    from test_backend_gpu import check_fa_rule, on_gpu

    args = [*make_inputs(), per_head().reshape(HQ, 1, 1) * D ** -0.5]
    low = on_gpu(args)
    output, counts, records = compile_and_count(fn, *low)
    assert [(r.status, r.kind) for r in records] == [("rewritten", kind)], [str(r) for r in records]
    assert "+scale tensor" in records[0].form and counts[0]["softmax"] == 0
    with torch.no_grad():
        check_fa_rule(output, fn(*low), fn(*on_gpu(args, torch.float32)).float())
