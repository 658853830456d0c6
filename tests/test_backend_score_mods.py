"""FlashAttention's extensions found by the gla pass: soft capping (Gemma2), attention sinks (GPT-OSS), ALiBi
(BLOOM) and sliding-window masks, in small hand-written modules. Each positive is rewritten into one op call
that carries the extension, and computes what eager computes; scores are made large so that a dropped cap,
sink or bias would show. Each negative is left alone with its reason."""
import math

import pytest
import torch

import test_backend_support
from test_backend_support import assert_close, check_rewritten, compile_and_count, run_pass

B, HQ, HKV, S, D = 2, 8, 2, 24, 16
GROUP = HQ // HKV
SCALE = D ** -0.5
ARG = dict(softcap=12, alibi=13, sinks=14)  # positions of the extension arguments in the op call


def repeat_kv(x, groups=GROUP):
    return test_backend_support.repeat_kv(x, groups)


def additive(valid):
    """HF's additive mask from a [B, S] bool: 0 where attended, the dtype's min elsewhere."""
    return torch.where(valid[:, None, None, :], 0.0, torch.finfo(torch.float32).min)


def inputs(query_len=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, query_len, D, generator=generator) * 4  # large scores: the extensions matter
    k = torch.randn(B, HKV, S, D, generator=generator)
    v = torch.randn(B, HKV, S, D, generator=generator)
    valid = torch.arange(S)[None, :] < torch.tensor([9, S])[:, None]
    return q, k, v, valid


# ---- soft capping (transformers' Gemma2 eager attention) -----------------------------------------------------

CAP = 3.0


def gemma2_soft_cap(q, k, v, valid):
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE
    scores = scores / CAP
    scores = torch.tanh(scores)
    scores = scores * CAP
    scores = scores + additive(valid)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, repeat_kv(v))


def soft_cap_then_scaled(q, k, v, valid):
    """A multiplier after the cap and the mask: 0.5 * (cap * tanh(s / cap) + mask) is a cap of 0.5 * cap."""
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3))
    capped = CAP * torch.tanh(scores * (SCALE / CAP))
    probs = torch.softmax((capped.masked_fill(~valid[:, None, None, :], -math.inf)) * 0.5, dim=-1)
    return torch.matmul(probs, repeat_kv(v))


def mask_under_the_cap(q, k, v, valid):
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE + additive(valid)
    scores = CAP * torch.tanh(scores / CAP)
    return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))


# ---- attention sinks (transformers' GPT-OSS eager attention) -------------------------------------------------

SINKS = torch.linspace(-2.0, 6.0, HQ)  # some sinks outweigh the scores


def gpt_oss_sinks(q, k, v, valid, sinks):
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE + additive(valid).to(q.dtype)
    column = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
    combined = torch.cat([scores, column], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probs = torch.softmax(combined, dim=-1, dtype=combined.dtype)
    return torch.matmul(probs[..., :-1].to(v.dtype), repeat_kv(v))


def sinks_without_max_shift(q, k, v, valid, sinks):
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE
    scores = scores.masked_fill(~valid[:, None, None, :], -math.inf)
    column = sinks[None, :, None, None].expand(B, HQ, q.shape[2], 1)
    probs = torch.cat([scores, column], dim=3).softmax(dim=3)
    return torch.matmul(probs[:, :, :, :S], repeat_kv(v))


def sink_column_first(q, k, v, valid, sinks):
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE + additive(valid)
    column = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
    probs = torch.softmax(torch.cat([column, scores], dim=-1), dim=-1)
    return torch.matmul(probs[..., 1:], repeat_kv(v))


def alibi_and_sinks(q, k, v, valid, sinks):
    """BLOOM's bias beside GPT-OSS's sinks: the op's -slope * |i - j| differs from slope * j by a constant per row,
    which the sink's logit does not share (a miscompile if taken: 0.2-0.9 off on a helper's draws)."""
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE + additive(valid)
    scores = scores + alibi_slopes()[None, :, None, None] * torch.arange(S, dtype=torch.float32)
    column = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
    probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)
    return torch.matmul(probs[..., :-1], repeat_kv(v))


def sinks_per_sequence(q, k, v, valid, sinks):
    """A sink per (sequence, head): not the op's per-head sinks."""
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE + additive(valid)
    column = (sinks[None, :] + torch.arange(B)[:, None]).reshape(B, HQ, 1, 1).expand(-1, -1, q.shape[-2], -1)
    probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)
    return torch.matmul(probs[..., :-1], repeat_kv(v))


# ---- ALiBi (transformers' BLOOM: the bias through baddbmm) ---------------------------------------------------

def alibi_slopes(heads=HQ):
    return torch.tensor([2.0 ** (-(i + 1) / 2) for i in range(heads)])  # up to 0.7 per key: a strong bias


def bloom_attention(alibi, q, k, v, valid):
    """BLOOM's attention over an MHA cache: the bias added by baddbmm with the 1/sqrt(d) factor as alpha."""
    batch, heads, query_len, _ = q.shape
    k, v = repeat_kv(k), repeat_kv(v)
    scores = torch.baddbmm(alibi, q.reshape(batch * heads, query_len, D),
                           k.reshape(batch * heads, S, D).transpose(1, 2), beta=1.0, alpha=SCALE)
    scores = scores.view(batch, heads, query_len, S) + additive(valid)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    return torch.matmul(probs.reshape(batch * heads, query_len, S), v.reshape(batch * heads, S, D)).view(
        batch, heads, query_len, D)


def bloom_alibi(q, k, v, valid):
    """alibi = slopes * key position, repeated over the batch."""
    alibi = (alibi_slopes()[:, None, None] * torch.arange(S)[None, None, :]).repeat(q.shape[0], 1, 1)
    return bloom_attention(alibi, q, k, v, valid)


def counted_alibi(mask):
    """transformers 5.17's BLOOM: the key positions as the running count of a [B, S] mask, (cumsum - 1) * mask,
    times the slopes, a [B * H, 1, S] bias."""
    positions = ((mask.cumsum(dim=-1) - 1) * mask)[:, None, :]
    return (alibi_slopes()[:, None] * positions).reshape(mask.shape[0] * HQ, 1, S)


def bloom_alibi_from_ones(q, k, v, valid):
    """Without an attention mask 5.17's BLOOM makes one of ones: the count is the key index."""
    return bloom_attention(counted_alibi(torch.ones(q.shape[0], S)), q, k, v, valid)


def bloom_alibi_from_a_given_mask(q, k, v, valid):
    """From the mask the model was given: a count that skips padded keys, not a key position."""
    return bloom_attention(counted_alibi(valid.to(torch.float32)), q, k, v, valid)


def alibi_added(q, k, v, valid):
    """The bias added to the scores directly, from an iota of positions that starts at 5."""
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE
    positions = torch.arange(5, 5 + S, dtype=torch.float32)
    scores = scores + alibi_slopes()[None, :, None, None] * positions + additive(valid)
    return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))


def alibi_under_the_cap(q, k, v, valid):
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE
    scores = scores + alibi_slopes()[None, :, None, None] * torch.arange(S, dtype=torch.float32)
    scores = CAP * torch.tanh(scores / CAP) + additive(valid)
    return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))


def soft_cap_then_alibi(q, k, v, valid):
    """Gemma2's cap, then a BLOOM-like bias: FlashAttention's order (the bias after the cap)."""
    scores = CAP * torch.tanh(torch.matmul(q, repeat_kv(k).transpose(2, 3)) * (SCALE / CAP))
    scores = scores + alibi_slopes()[None, :, None, None] * torch.arange(S, dtype=torch.float32) + additive(valid)
    return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))


# ---- sliding window (a mask, as transformers' sliding layers pass it) ----------------------------------------

def sliding_window_mask(q, k, v, valid):
    position = valid.sum(-1) - 1  # the query's position: the last valid key
    keys = torch.arange(S)
    in_window = (keys[None, :] <= position[:, None]) & (keys[None, :] > position[:, None] - 5)
    scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE
    scores = scores.masked_fill(~in_window[:, None, None, :], torch.finfo(torch.float32).min)
    return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))


def test_gemma2_soft_cap():
    args = check_rewritten(gemma2_soft_cap, *inputs()).op_calls()[0].args
    assert args[ARG["softcap"]] == pytest.approx(CAP)
    assert args[8] == pytest.approx(SCALE)  # softmax_scale: the products' scale, the cap taken out


def test_soft_cap_with_a_multiplier_after_it():
    args = check_rewritten(soft_cap_then_scaled, *inputs(query_len=3)).op_calls()[0].args
    assert args[ARG["softcap"]] == pytest.approx(0.5 * CAP)


@pytest.mark.parametrize("fn", [gpt_oss_sinks, sinks_without_max_shift])
def test_sinks(fn):
    args = check_rewritten(fn, *inputs(query_len=2), SINKS).op_calls()[0].args
    assert args[ARG["sinks"]] is not None and args[ARG["softcap"]] == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sinks_in_half_precision(dtype):
    """GPT-OSS in bf16/fp16: the softmax upcasts the shifted scores and casts the probabilities back before
    the sink column is dropped; both casts sit between the pieces of the sink pattern."""
    q, k, v, valid = inputs(query_len=2)
    exact = gpt_oss_sinks(q, k, v, valid, SINKS)
    low = [t.to(dtype) if t.is_floating_point() else t for t in (q, k, v, valid, SINKS)]
    output, _, records = compile_and_count(gpt_oss_sinks, *low)  # the backend: Inductor's decompositions
    assert [(r.status, r.form) for r in records] == [("rewritten", "decomposed softmax +sinks")], \
        [str(r) for r in records]
    eager_error = (gpt_oss_sinks(*low).float() - exact).abs().max().item()
    assert (output.float() - exact).abs().max().item() <= 2 * eager_error + 1e-3


@pytest.mark.parametrize("fn", [bloom_alibi, bloom_alibi_from_ones, alibi_added])
def test_alibi(fn):
    args = check_rewritten(fn, *inputs()).op_calls()[0].args
    assert args[ARG["alibi"]] is not None


def test_positions_counted_over_ones_become_an_iota():
    """BLOOM's running count over its own mask of ones is read as key positions: the site is rewritten and no
    cumsum is left in the graph."""
    result = run_pass(bloom_alibi_from_ones, *inputs())
    targets = [node.target for node in result.graph.nodes if node.op == "call_function"]
    assert torch.ops.aten.cumsum.default not in targets and result.statuses == ["rewritten"], result.reasons


def test_soft_cap_then_alibi():
    args = check_rewritten(soft_cap_then_alibi, *inputs()).op_calls()[0].args
    assert args[ARG["softcap"]] == pytest.approx(CAP) and args[ARG["alibi"]] is not None


def test_sliding_window_mask_takes_the_mask_path():
    args = check_rewritten(sliding_window_mask, *inputs()).op_calls()[0].args
    assert args[7] is not None and len(args) == 12  # a mask, no extension arguments


@pytest.mark.parametrize("fn, extra, reason", [
    (mask_under_the_cap, (), "under the soft cap"),
    (alibi_under_the_cap, (), "under a soft cap"),
    (sink_column_first, (SINKS,), "wider than one sink"),
    (sinks_per_sequence, (SINKS,), "not per head only"),
    (alibi_and_sinks, (SINKS,), "ALiBi with sinks"),
])
def test_forms_the_op_cannot_take_are_left_alone(fn, extra, reason):
    args = (*inputs(), *extra)
    result = run_pass(fn, *args)
    assert result.after["gla"] == 0 and result.statuses == ["skipped"] and reason in result.reasons, result.reasons
    with torch.no_grad():
        assert_close(result.output, fn(*args), tol=1e-4)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_bloom_alibi_from_a_given_mask_is_a_bias_per_query_head(padding):
    """From the mask the model was given, BLOOM's bias counts the valid keys: no ALiBi the op computes (a key
    position), but a bias per query head, [B * Hq, 1, S], which reaches the op as an additive mask (its first axis
    read as batch, KV head and group)."""
    q, k, v, valid = inputs()
    if padding == "left":
        valid = torch.arange(S)[None, :] >= torch.tensor([7, 0])[:, None]
    args = check_rewritten(bloom_alibi_from_a_given_mask, q, k, v, valid).op_calls()[0].args
    assert len(args) <= ARG["alibi"] or args[ARG["alibi"]] is None
    assert args[7].meta["val"].dtype == torch.float32  # (the op call's attn_mask)


def test_alibi_with_tokens_that_share_a_mask():
    """Draft tokens under one mask are rows like heads (the op packs them as heads at one position): the bias
    c[h] * j is the op's ALiBi for each."""
    args = check_rewritten(bloom_alibi, *inputs(query_len=3)).op_calls()[0].args
    assert args[ARG["alibi"]] is not None


def test_alibi_with_query_positions_is_left_alone():
    """A causal mask makes the tokens positions: there the op's |query - key| distance is not the model's
    bias for keys past a query, which the pass cannot rule out."""
    q, k, v, valid = inputs(query_len=2)
    causal = (torch.arange(S)[None, None, :] <= torch.tensor([7, 8])[None, :, None]) & valid[:, None, :]

    def fn(q, k, v, allowed):
        scores = torch.matmul(q, repeat_kv(k).transpose(2, 3)) * SCALE
        scores = scores + alibi_slopes()[None, :, None, None] * torch.arange(S, dtype=torch.float32)
        scores = scores.masked_fill(~allowed[:, None], -math.inf)
        return torch.matmul(torch.softmax(scores, dim=-1), repeat_kv(v))

    result = run_pass(fn, q, k, v, causal)
    assert result.after["gla"] == 0 and "ALiBi with several query tokens" in result.reasons, result.reasons
    with torch.no_grad():
        assert_close(result.output, fn(q, k, v, causal), tol=1e-4)


def _rewrite_and_compare(fn, x, tracing_mode="fake") -> tuple:
    """(counts rewritten, the rewritten graph) of running_counts_as_positions on fn's ATen graph, whose results
    must equal fn's, strides included."""
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    from glacompiler.compiler.trace.running_counts import running_counts_as_positions

    module = make_fx(fn, decomposition_table=select_decomp_table(), tracing_mode=tracing_mode)(x)
    rewritten = running_counts_as_positions(module.graph)
    module.graph.lint()
    module.recompile()
    ours, theirs = module(x), fn(x)
    assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()
    return rewritten, module.graph


@pytest.mark.parametrize("dtype, tracing_mode, rewritten", [
    (torch.float32, "fake", 2), (torch.int64, "fake", 2), (torch.float32, "symbolic", 2),
    (torch.float16, "fake", 0),  # a count in half precision is inexact past 2048 keys
])
def test_running_counts_become_iotas_with_the_same_values(dtype, tracing_mode, rewritten):
    """The rewrite on its own: counts of ones along either axis, shifted and multiplied by the ones, keep their
    values (sizes traced symbolically too); no cumsum and no product with the ones is left (the one by 10 stays)."""
    def counts(x):
        ones = torch.ones(x.shape[0], x.shape[1], dtype=dtype)
        return x + (ones.cumsum(dim=-1) - 1) * ones + ones.cumsum(dim=0) * 10

    done, graph = _rewrite_and_compare(counts, torch.randn(3, 5).to(dtype), tracing_mode)
    aten = torch.ops.aten
    left = [n for n in graph.nodes if n.target is aten.cumsum.default or (
        n.target is aten.mul.Tensor and any(getattr(a, "target", None) is aten.full.default for a in n.args))]
    assert done == rewritten and len(left) == (0 if rewritten else 3), [n.format_node() for n in left]


def _count_times_other_ones(x):
    ones, other = torch.ones(3, 5), torch.ones(3, 5)
    return x + (ones.cumsum(-1) - float("inf")) * other


@pytest.mark.parametrize("fn, rewritten", [
    (_count_times_other_ones, 1),  # the count is rewritten; the infinite shift and the other ones' product stay
    (lambda x: x + torch.ones(()).cumsum(0), 0),  # no axis to count along
    (lambda x: torch.ones(3, 5).cumsum(-1) - 1, 0),  # an output: its strides must stay the eager ones
])
def test_running_counts_rewrite_only_what_keeps_values_and_strides(fn, rewritten):
    assert _rewrite_and_compare(fn, torch.randn(3, 5))[0] == rewritten


def sinks_all_heads_own_keys(q, k, v, valid, sinks):
    """MHA (a KV head per query head) with GPT-OSS's sink column."""
    scores = torch.matmul(q, k.transpose(2, 3)) * SCALE + additive(valid)
    column = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
    probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)
    return torch.matmul(probs[..., :-1], v)


@pytest.mark.parametrize("fn, kind, kv_heads", [(gpt_oss_sinks, "gqa", HKV), (sinks_all_heads_own_keys, "mha", HQ)])
def test_sinks_at_batch_one(fn, kind, kv_heads):
    """A batch of one has no batch dim in the scores: the one dim where q and k both vary is the KV heads (the query
    heads split into it and groups, or the sinks vary along it). It was taken for the batch: the site reported as
    MQA and the sinks declined as varying per sequence (a helper's adversarial run; GPT-OSS at batch 1)."""
    q, k, v, valid = (t[:1] for t in inputs())
    if kv_heads == HQ:
        k, v = repeat_kv(k).clone(), repeat_kv(v).clone()
    output, _, records = compile_and_count(fn, q, k, v, valid, SINKS)
    assert [(r.status, r.kind, r.spec.num_q_heads, r.spec.num_kv_heads) for r in records] == [
        ("rewritten", kind, HQ, kv_heads)], [str(r) for r in records]
    with torch.no_grad():
        assert_close(output, fn(q, k, v, valid, SINKS), tol=1e-4)
