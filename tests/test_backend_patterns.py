"""Every attention form the gla pass recognises: the pass replaces the attention ops (SDPA, or softmax with
its two products) by exactly one glacompiler op, reports the right kind, and the rewritten graph computes
what eager computes (fp32)."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from test_backend_support import PassHarness, assert_close, compile_and_count, repeat_kv, run_pass

B, HQ, HKV, S, D = 2, 8, 2, 24, 16
GROUP = HQ // HKV
LATENT, ROPE = 32, 16  # MLA / GLA latent width and shared rope key width
GTA_HEAD = 32  # GTA tied state width (its rope part is ROPE wide)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def lengths_mask(lengths, capacity=S):
    """[B, S] bool: key position < length."""
    return torch.arange(capacity)[None, :] < torch.tensor(lengths)[:, None]


# ---- SDPA ---------------------------------------------------------------------------------------------------


def sdpa_mha(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_enable_gqa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def sdpa_repeat_kv(q, k, v):
    return F.scaled_dot_product_attention(q, repeat_kv(k, GROUP), repeat_kv(v, GROUP))


def sdpa_bool_mask_and_scale(q, k, v, valid):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], scale=0.3, enable_gqa=True)


def sdpa_additive_mask(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)


def sdpa_is_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


# ---- hand-written -------------------------------------------------------------------------------------------


def matmul_div(q, k, v):
    k, v = repeat_kv(k, GROUP), repeat_kv(v, GROUP)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D)
    return torch.matmul(scores.softmax(dim=-1), v)


def bmm_mul_3d(q, k, v):
    """Flattened (batch * heads) 3D bmm, scale by multiply."""
    k, v = repeat_kv(k, GROUP), repeat_kv(v, GROUP)
    q3, k3, v3 = (t.reshape(B * HQ, t.shape[2], D) for t in (q, k, v))
    probs = torch.softmax(torch.bmm(q3, k3.transpose(1, 2)) * D ** -0.5, dim=-1)
    return torch.bmm(probs, v3).view(B, HQ, -1, D)


def einsum_repeat_interleave(q, k, v):
    k, v = k.repeat_interleave(GROUP, dim=1), v.repeat_interleave(GROUP, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * D ** -0.5
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def masked_fill_bool(q, k, v, valid):
    k, v = repeat_kv(k, GROUP), repeat_kv(v, GROUP)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def where_min_fill(q, k, v, valid):
    k, v = repeat_kv(k, GROUP), repeat_kv(v, GROUP)
    scores = (q @ k.transpose(-1, -2)) * D ** -0.5
    scores = torch.where(valid[:, None, None, :], scores, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) @ v


def hf_eager_additive(q, k, v, valid):
    """Hugging Face's eager attention: additive min-filled mask, fp32 softmax, cast back."""
    k, v = repeat_kv(k, GROUP), repeat_kv(v, GROUP)
    mask = torch.where(valid, 0.0, torch.finfo(q.dtype).min)[:, None, None, :].to(q.dtype)
    weights = torch.matmul(q, k.transpose(2, 3)) * D ** -0.5 + mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


def additive_bias_before_scale(q, k, v, bias):
    """A finite float bias added before the scale: kept additive, multiplied by the later scale."""
    scores = (q @ repeat_kv(k, GROUP).transpose(-1, -2) + bias) * 0.2
    return scores.softmax(-1) @ repeat_kv(v, GROUP)


def mqa_broadcast(q, k, v):
    """MQA by broadcasting one KV head ([B, 1, S, D]) in the matmul."""
    scores = (q @ k[:, :1].transpose(-1, -2)) * D ** -0.5
    return scores.softmax(-1) @ v[:, :1]


# ---- tied and latent kinds ----------------------------------------------------------------------------------


def gta_cat(q, tied, rope_key, valid):
    """GTA: K = cat(tied[..., :d_h - d_R], one rope key broadcast over heads), V = tied. [B, S, Hkv, d_h]."""
    k = torch.cat([tied[..., : GTA_HEAD - ROPE], rope_key[:, :, None, :].expand(B, S, HKV, ROPE)], dim=-1)
    k, v = repeat_kv(k.transpose(1, 2), GROUP), repeat_kv(tied.transpose(1, 2), GROUP)
    scores = q.transpose(1, 2) @ k.transpose(-1, -2) / math.sqrt(GTA_HEAD)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def gta_sdpa(q, tied, rope_key, valid):
    k = torch.cat([tied[..., : GTA_HEAD - ROPE], rope_key[:, :, None, :].expand(B, S, HKV, ROPE)], dim=-1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), tied.transpose(1, 2),
                                         attn_mask=valid[:, None, None, :], enable_gqa=True)
    return out.transpose(1, 2)


def mla_absorbed(q_latent, q_rope, latent, rope_key, valid):
    """MLA decode, absorbed: q_lat . c + q_pe . k_pe, softmax, . c. latent [B, S, d_c], rope_key [B, S, d_R]."""
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    scores = scores * (D + ROPE) ** -0.5
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.einsum("bhls,bsc->blhc", scores.softmax(-1), latent)


def gla_grouped(q_latent, q_rope, latent, rope_key, valid):
    """GLA: query heads grouped contiguously onto h_c latent heads by a view. latent [B, S, h_c, d_c]."""
    latent_heads = latent.shape[2]
    grouped = q_latent.view(B, 1, latent_heads, HQ // latent_heads, LATENT)
    scores = torch.einsum("bljgc,bsjc->bjgls", grouped, latent)
    scores = scores + torch.einsum("blhr,bsr->bhls", q_rope, rope_key).view(B, latent_heads, HQ // latent_heads, 1, S)
    scores = torch.where(valid[:, None, None, None, :], scores * 0.125, float("-inf"))
    out = torch.einsum("bjgls,bsjc->bljgc", scores.softmax(-1), latent)
    return out.reshape(B, 1, HQ, LATENT)


# The CUDA kernels' ops, called directly (their fake implementations let them trace on CPU; once rewritten the
# graph runs on CPU): what F.scaled_dot_product_attention decomposes to on a GPU.


def cuda_flash(q, k, v):
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, scale=0.3)[0]


def cuda_efficient_padded_bias(q, k, v, valid):
    """Efficient attention gets the bool mask as a float bias, padded to a multiple of 16 and sliced back."""
    bias = torch.where(valid, 0.0, float("-inf"))[:, None, None, :].expand(B, HQ, 1, S)
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, F.pad(bias, (0, 8))[..., :S], False)[0]


def cuda_cudnn(q, k, v):
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False)[0]


def sdpa_inputs(query_len=1, kv_heads=HKV):
    return randn(B, HQ, query_len, D), randn(B, kv_heads, S, D), randn(B, kv_heads, S, D)


CASES = {
    # name: (function, inputs, kind[, eager reference when the function itself only runs on a GPU])
    "sdpa_mha": (sdpa_mha, lambda: sdpa_inputs(kv_heads=HQ), "mha"),
    "sdpa_enable_gqa": (sdpa_enable_gqa, sdpa_inputs, "gqa"),
    "sdpa_enable_gqa_mqa": (sdpa_enable_gqa, lambda: sdpa_inputs(kv_heads=1), "mqa"),
    "sdpa_repeat_kv": (sdpa_repeat_kv, sdpa_inputs, "gqa"),
    "sdpa_bool_mask_and_scale": (sdpa_bool_mask_and_scale, lambda: (*sdpa_inputs(), lengths_mask([7, S])), "gqa"),
    "sdpa_additive_mask": (sdpa_additive_mask, lambda: (*sdpa_inputs(query_len=3), randn(B, 1, 3, S)), "gqa"),
    "sdpa_is_causal_multi_token": (sdpa_is_causal, lambda: sdpa_inputs(query_len=4), "gqa"),
    "sdpa_mha_multi_token": (sdpa_is_causal, lambda: sdpa_inputs(query_len=6, kv_heads=HQ), "mha"),
    "matmul_div": (matmul_div, sdpa_inputs, "gqa"),
    "bmm_mul_3d": (bmm_mul_3d, sdpa_inputs, "gqa"),
    "einsum_repeat_interleave": (einsum_repeat_interleave, sdpa_inputs, "gqa"),
    "masked_fill_bool": (masked_fill_bool, lambda: (*sdpa_inputs(), lengths_mask([5, 17])), "gqa"),
    "where_min_fill": (where_min_fill, lambda: (*sdpa_inputs(), lengths_mask([5, 17])), "gqa"),
    "hf_eager_additive": (hf_eager_additive, lambda: (*sdpa_inputs(), lengths_mask([9, 24])), "gqa"),
    "additive_bias_before_scale": (additive_bias_before_scale, lambda: (*sdpa_inputs(query_len=2), randn(1, 1, 2, S)),
                                   "gqa"),
    "mqa_broadcast": (mqa_broadcast, sdpa_inputs, "mqa"),
    "gta_cat": (gta_cat, lambda: (randn(B, 1, HQ, GTA_HEAD), randn(B, S, HKV, GTA_HEAD), randn(B, S, ROPE),
                                  lengths_mask([3, 20])), "gta"),
    "gta_sdpa": (gta_sdpa, lambda: (randn(B, 1, HQ, GTA_HEAD), randn(B, S, HKV, GTA_HEAD), randn(B, S, ROPE),
                                    lengths_mask([3, 20])), "gta"),
    "mla_absorbed": (mla_absorbed, lambda: (randn(B, 1, HQ, LATENT), randn(B, 1, HQ, ROPE), randn(B, S, LATENT),
                                            randn(B, S, ROPE), lengths_mask([11, 24])), "mla"),
    "gla_grouped": (gla_grouped, lambda: (randn(B, 1, HQ, LATENT), randn(B, 1, HQ, ROPE), randn(B, S, 2, LATENT),
                                          randn(B, S, ROPE), lengths_mask([11, 24])), "gla"),
    "cuda_flash": (cuda_flash, lambda: sdpa_inputs(kv_heads=HQ), "mha",
                   lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3)),
    "cuda_efficient_padded_bias": (
        cuda_efficient_padded_bias, lambda: (*sdpa_inputs(kv_heads=HQ), lengths_mask([5, 20])), "mha",
        lambda q, k, v, valid: F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])),
    "cuda_cudnn": (cuda_cudnn, lambda: sdpa_inputs(kv_heads=HQ), "mha", F.scaled_dot_product_attention),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pass_rewrites_variant(name):
    fn, make_inputs, kind, *reference = CASES[name]
    torch.manual_seed(0)
    inputs = make_inputs()
    result = run_pass(fn, *inputs)
    assert result.statuses == ["rewritten"], result.reasons
    assert result.records[0].kind == kind
    assert result.before["gla"] == 0 and result.before["sdpa"] + result.before["softmax"] == 1
    assert result.after["gla"] == 1
    assert result.after["sdpa"] == 0 and result.after["softmax"] == 0 and result.after["bmm"] == 0
    assert_close(result.output, (reference[0] if reference else fn)(*inputs))


def test_bf16_upcast_softmax_and_cast_back():
    """bf16 with HF's fp32 softmax and cast back: rewritten; within bf16 rounding of eager (FA rule: at most
    twice eager's own error against fp32, plus a tiny atol)."""
    torch.manual_seed(0)
    q, k, v = (t.to(torch.bfloat16) for t in sdpa_inputs())
    valid = lengths_mask([9, 24])
    result = run_pass(hf_eager_additive, q, k, v, valid)
    assert result.statuses == ["rewritten"], result.reasons
    assert result.records[0].spec.dtype == "bfloat16"
    reference = hf_eager_additive(q.float(), k.float(), v.float(), valid)
    eager_error = (hf_eager_additive(q, k, v, valid).float() - reference).abs().max().item()
    ours_error = (result.output.float() - reference).abs().max().item()
    assert ours_error <= 2 * eager_error + 1e-5


def test_scale_and_mask_reach_the_op():
    """The op call carries the user's scale, causal=False and a boolean mask (not SDPA's float -inf form),
    so the kernel can skip key blocks the mask rules out."""
    torch.manual_seed(0)
    result = run_pass(sdpa_bool_mask_and_scale, *sdpa_inputs(), lengths_mask([7, S]))
    (call,) = result.op_calls()
    q, k_cache, v_cache, q_rope, k_rope, seqlens, pages, mask, scale, causal, splits, kv_range = call.args
    assert scale == pytest.approx(0.3) and causal is False
    assert mask.meta["val"].dtype == torch.bool and list(mask.meta["val"].shape) == [B, 1, 1, S]
    assert list(q.meta["val"].shape) == [B, 1, HQ, D] and list(k_cache.meta["val"].shape) == [B, S, HKV, D]
    assert q_rope is None and k_rope is None and seqlens is None and pages is None
    assert kv_range.target is torch.ops.glacompiler.mask_key_range.default and kv_range.args[0] is mask


def _gpt_fast_step(q, k_new, v_new, k_cache, v_cache, position):
    """gpt-fast style: write the new K/V into the static cache at a tensor position (index_copy_ / slice
    assignment), then attend over the whole cache with a mask of the written positions."""
    k_cache.index_copy_(2, position, k_new)
    v_cache[:, :, position] = v_new
    visible = (torch.arange(k_cache.shape[2]) <= position)[None, None, None, :]
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible, enable_gqa=True)


def test_static_cache_writes_before_attention_stay_correct():
    torch.manual_seed(0)
    q, k_new, v_new = randn(B, HQ, 1, D), randn(B, HKV, 1, D), randn(B, HKV, 1, D)
    caches = randn(B, HKV, S, D), randn(B, HKV, S, D)
    position = torch.tensor([13])
    ours = [c.clone() for c in caches]
    result = run_pass(_gpt_fast_step, q, k_new, v_new, *ours, position)
    assert result.statuses == ["rewritten"], result.reasons
    eager = [c.clone() for c in caches]
    expected = _gpt_fast_step(q, k_new, v_new, *eager, position)
    assert_close(result.output, expected)
    for mine, theirs in zip(ours, eager):
        assert torch.equal(mine, theirs)


def _prefix_of_static_cache(q, k_cache, v_cache, length: int):
    """Attention over the filled prefix of a static cache (a slice, read in place)."""
    k, v = repeat_kv(k_cache[:, :, :length], GROUP), repeat_kv(v_cache[:, :, :length], GROUP)
    return ((q @ k.transpose(-1, -2)) * D ** -0.5).softmax(-1) @ v


def test_prefix_slice_of_cache():
    torch.manual_seed(0)
    q, k, v = sdpa_inputs()
    result = run_pass(_prefix_of_static_cache, q, k, v, 10)
    assert result.statuses == ["rewritten"], result.reasons
    assert_close(result.output, _prefix_of_static_cache(q, k, v, 10))


@pytest.mark.parametrize("name", ["sdpa_enable_gqa", "hf_eager_additive", "gta_cat", "mla_absorbed", "gla_grouped",
                                  "sdpa_is_causal_multi_token", "sdpa_mha_multi_token"])
def test_full_backend_matches_eager(name):
    """The same through torch.compile(backend="gla"): Inductor compiles the rewritten graph. (Multi-token:
    Inductor checks that the op's outputs have the strides its fake implementation promises.)"""
    fn, make_inputs, kind, *_ = CASES[name]
    torch.manual_seed(0)
    inputs = make_inputs()
    output, counts, records = compile_and_count(fn, *inputs)
    assert [r.status for r in records] == ["rewritten"] and records[0].kind == kind
    assert counts[0]["gla"] == 1 and counts[0]["softmax"] == 0 and counts[0]["sdpa"] == 0
    assert_close(output, fn(*inputs))


def test_symbolic_batch_and_key_length():
    """Batch and key length marked dynamic are symbols in the graph; the op gets views sized by them."""
    harness = PassHarness(masked_fill_bool)
    for batch, length in ((2, 24), (3, 40)):
        torch.manual_seed(batch)
        q, k, v = randn(batch, HQ, 1, D), randn(batch, HKV, length, D), randn(batch, HKV, length, D)
        valid = torch.arange(length)[None, :] < torch.randint(1, length, (batch, 1))
        for tensor in (q, k, v, valid):
            torch._dynamo.mark_dynamic(tensor, 0)
        for tensor, dim in ((k, 2), (v, 2), (valid, 1)):
            torch._dynamo.mark_dynamic(tensor, dim)
        assert_close(harness(q, k, v, valid), masked_fill_bool(q, k, v, valid))
    result = harness.result()
    assert result.statuses == ["rewritten"], result.reasons
    batch_size, key_length = (result.op_calls()[0].args[1].meta["val"].shape[i] for i in (0, 1))
    assert not isinstance(batch_size, int) and not isinstance(key_length, int)


# ---- one mask key range per distinct mask ------------------------------------------------------------------


def _layers(q, keys, values, lengths, make_mask):
    """Three attention "layers", each computing its mask itself, as model layers do."""
    out = q
    for layer in range(keys.shape[0]):
        valid = make_mask(lengths, layer)
        out = F.scaled_dot_product_attention(out, keys[layer], values[layer], attn_mask=valid[:, None, None, :],
                                             enable_gqa=True)
    return out


# Windows, not prefixes: a prefix of the keys reaches the op as lengths instead (tests/test_mask_as_lengths.py).
def _same_window(lengths, layer):
    return (torch.arange(S)[None, :] >= 2) & (torch.arange(S)[None, :] < lengths[:, None])


def _shrinking_window(lengths, layer):
    return (torch.arange(S)[None, :] >= 2) & (torch.arange(S)[None, :] < (lengths - 3 * layer)[:, None])


def _random_keys(lengths, layer):
    return torch.rand(lengths.shape[0], S) < 0.7  # computed anew per layer: never the same mask twice


@pytest.mark.parametrize("make_mask, ranges", [(_same_window, 1), (_shrinking_window, 3), (_random_keys, 3)])
def test_layers_share_the_mask_range_only_when_their_masks_agree(make_mask, ranges):
    """Sites whose masks are the same pure computation on the same inputs share one mask_key_range (one
    launch per step instead of one per layer); other masks each get their own, and results match eager."""
    torch.manual_seed(0)
    q = randn(B, HQ, 1, D)
    keys, values = randn(3, B, HKV, S, D), randn(3, B, HKV, S, D)
    lengths = torch.tensor([9, S])
    fn = functools.partial(_layers, make_mask=make_mask)
    if make_mask is _random_keys:
        torch.manual_seed(1)
        result = run_pass(fn, q, keys, values, lengths)
        assert result.statuses == ["rewritten"] * 3 and result.after["mask_range"] == ranges
        return  # a random mask: no eager output to compare with
    result = run_pass(fn, q, keys, values, lengths)
    assert result.statuses == ["rewritten"] * 3
    assert result.after["gla"] == 3 and result.after["mask_range"] == ranges
    assert_close(result.output, fn(q, keys, values, lengths))
